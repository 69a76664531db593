"""Docker calls of the sandbox-image builder: build from a tar context, list local tags, remove.

The build is the engine's classic builder (`POST /build` with a tar body, no BuildKit session), run
with the builder resources the SDK asked for: memory (and memory+swap, so no swap) in MiB, a CPU
quota, and a file-size limit of the builder disk (RLIMIT_FSIZE, bytes): overlay2 on ext4 has no
per-container disk quota, so a step that writes past the disk budget gets EFBIG/SIGXFSZ instead of
filling the host's disk. Intermediate containers are always removed (forcerm).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

from emulator.errors import BackendUnavailable


@dataclass
class BuildLimits:
    """Builder resources: cpus in cores, memory_mb and disk_mb in MiB."""

    cpus: float
    memory_mb: int
    disk_mb: int


@dataclass
class BuildResult:
    """A finished engine build: the image id when it succeeded, else the engine's error message.
    `exit_code` is the failing step's code when the engine reported one (137: killed, 153: SIGXFSZ)."""

    image_id: str | None
    error: str | None = None
    exit_code: int | None = None


class DockerImageBuilder:
    """Builds, finds and removes the images the emulator registers (one per registered name)."""

    def __init__(self, docker: Callable[[], aiodocker.Docker]) -> None:
        self._docker = docker

    async def local_tags(self) -> set[str]:
        """Every `repo:tag` the engine has (to resolve FROM lines without a registry)."""
        try:
            images = await self._docker().images.list()
        except DockerError as exc:
            raise BackendUnavailable(f"Docker image list failed: {exc.message}") from exc
        return {t for img in images for t in (img.get("RepoTags") or []) if t != "<none>:<none>"}

    async def build(self, context: bytes, dockerfile: str, tag: str, limits: BuildLimits,
                    buildargs: dict[str, str], labels: dict[str, str], on_line: Callable[[str], None]) -> BuildResult:
        """Build `context` (an uncompressed tar holding `dockerfile`), tag the image `tag`, label it `labels`.

        Every line of the engine's output goes to `on_line` as it arrives. Engine errors that are the
        build's fault come back in BuildResult.error; an engine that cannot be reached raises
        BackendUnavailable.
        """
        params: dict[str, Any] = {
            "t": tag, "dockerfile": dockerfile, "rm": "1", "forcerm": "1", "pull": "0",
            "memory": str(limits.memory_mb * 1024 * 1024), "memswap": str(limits.memory_mb * 1024 * 1024),
            "cpuperiod": "100000", "cpuquota": str(max(1000, int(limits.cpus * 100000))),
            "ulimits": json.dumps([{"Name": "fsize", "Soft": limits.disk_mb * 1024 * 1024,
                                    "Hard": limits.disk_mb * 1024 * 1024}]),
        }
        if buildargs:
            params["buildargs"] = json.dumps(buildargs)
        if labels:
            params["labels"] = json.dumps(labels)
        docker = self._docker()
        image_id: str | None = None
        error: str | None = None
        try:
            async with docker._query("build", "POST", params=params, data=context,
                                     headers={"content-type": "application/x-tar"},
                                     timeout=docker._resolve_long_running_timeout(None)) as resp:
                async for raw in resp.content:
                    if not raw.strip():
                        continue
                    try:
                        item = json.loads(raw)
                    except ValueError:
                        on_line(raw.decode(errors="replace").rstrip())
                        continue
                    if "stream" in item:
                        for line in str(item["stream"]).splitlines():
                            if line.strip():
                                on_line(line)
                    if "aux" in item and isinstance(item["aux"], dict) and item["aux"].get("ID"):
                        image_id = item["aux"]["ID"]
                    if "error" in item:
                        error = str(item["error"]).strip()
                        on_line(error)
        except DockerError as exc:
            if exc.status >= 500 and "connect" in str(exc.message).lower():
                raise BackendUnavailable(f"Docker build failed: {exc.message}") from exc
            error = str(exc.message).strip()
            on_line(error)
        if error is None and image_id is None:
            try:
                image_id = (await docker.images.inspect(tag))["Id"]
            except DockerError as exc:
                error = f"the build reported no image: {exc.message}"
        return BuildResult(image_id=None if error else image_id, error=error, exit_code=_exit_code(error))

    async def read_dir(self, container_id: str, path: str) -> bytes:
        """A folder of a container as the engine's tar (its members under the folder's base name)."""
        docker = self._docker()
        try:
            async with docker._query(f"containers/{container_id}/archive", method="GET",
                                     params={"path": path}) as resp:
                return bytes(await resp.read())
        except DockerError as exc:
            raise BackendUnavailable(f"could not read {path} from the builder sandbox: {exc.message}") from exc

    async def prune_dangling(self, key: str, value: str) -> int:
        """Remove the untagged images labelled key=value (layers of finished builds); how many went."""
        filters = json.dumps({"label": [f"{key}={value}"], "dangling": ["true"]})
        removed = 0
        try:
            images = await self._docker().images.list(filters=filters)
        except DockerError:
            return 0
        for img in images:
            try:
                await self._docker().images.delete(img["Id"], noprune=False)
                removed += 1
            except DockerError:
                pass  # in use (a sandbox runs from a replaced image): a later prune gets it
        return removed

    async def image_size(self, ref: str) -> int:
        """The image's size in bytes (all layers), 0 when unknown."""
        try:
            return int((await self._docker().images.inspect(ref)).get("Size") or 0)
        except DockerError:
            return 0

    async def image_id(self, ref: str) -> str | None:
        try:
            return str((await self._docker().images.inspect(ref))["Id"])
        except DockerError:
            return None

    async def remove(self, ref: str) -> None:
        """Untag/remove `ref`; an image still used by a sandbox keeps its layers until that ends
        (the dangling-image prune by label gets it then). Missing is fine."""
        try:
            await self._docker().images.delete(ref, force=False, noprune=False)
        except DockerError as exc:
            if exc.status == 404:
                return
            if exc.status == 409:  # in use by a container: drop the name, keep the layers for now
                try:
                    await self._docker().images.delete(ref, force=True, noprune=True)
                except DockerError:
                    pass
                return
            raise BackendUnavailable(f"Docker image delete failed: {exc.message}") from exc


def _exit_code(error: str | None) -> int | None:
    """The code in the classic builder's `... returned a non-zero code: N`."""
    if not error:
        return None
    marker = "non-zero code: "
    if marker in error:
        tail = error.split(marker, 1)[1].strip().split()[0].rstrip(".")
        if tail.isdigit():
            return int(tail)
    return None

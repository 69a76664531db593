"""Docker Engine API backend (aiodocker). The only module that creates, starts or removes containers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from emulator.agent_channel import AGENT_SOCKET_NAME
from emulator.backend import cgroup_resize
from emulator.backend.base import (
    AGENT_BIN_DIR_IN_SANDBOX,
    AGENT_DIR_IN_SANDBOX,
    AGENT_EXE_IN_SANDBOX,
    LABEL_INSTANCE,
    LABEL_SANDBOX,
    ContainerSpec,
    ContainerState,
    EngineInfo,
    ImageFacts,
)
from emulator.errors import BackendUnavailable, EmulatorError, ImageIncompatible, ImageNotFound, RuntimeMissing
from emulator.labels import LABEL_CANARY, instance_filter

log = logging.getLogger(__name__)
MiB = 1024 * 1024

# Docker's default set minus what a code sandbox never needs (raw sockets, mknod, chroot, audit,
# file capabilities): dropped explicitly so a stock image cannot regain them.
# `docker info` gives the kernel's machine name; images name architectures the Go way (OCI platform).
_ARCH_NAMES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386",
               "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def _runtime_unknown(message: str, runtime: str) -> bool:
    """Docker's answer when the configured runtime is missing: not registered ("Unknown runtime specified
    runsc") or registered but its executable absent (`exec: "runsc": executable file not found`). Only
    that is RUNTIME_NOT_AVAILABLE: an OCI error names runc ("OCI runtime create failed: ...") for any
    failure of the container's own start, an exec refused in the image as much as a missing runtime."""
    low = message.lower()
    return "unknown runtime" in low or f'exec: "{runtime.lower()}"' in low


def _start_failure(message: str) -> str:
    """The useful tail of runc's start error: what failed in the image (an exec, a mount)."""
    for marker in ("runc create failed: ", "unable to start container process: ", "error during container init: "):
        if marker in message:  # each a prefix of the next one's context: strip them in order
            message = message.split(marker, 1)[1]
    return message.removesuffix(": unknown").strip()


_CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP", "NET_BIND_SERVICE"]


class DockerBackend:
    def __init__(self, url: str, runtime: str, instance: str) -> None:
        self._url = url
        self._runtime = runtime
        self._instance = instance
        self._docker: aiodocker.Docker | None = None
        self._prune_exempt: Counter[str] = Counter()

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self._url)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def info(self) -> EngineInfo:
        try:
            info = await self.docker.system.info()
            version = await self.docker.version()
        except (DockerError, OSError) as exc:
            raise BackendUnavailable(f"Docker engine not reachable at {self._url}: {exc}") from exc
        return EngineInfo(
            version=version.get("Version", "?"),
            runtimes=sorted((info.get("Runtimes") or {}).keys()),
            experimental=bool(info.get("ExperimentalBuild")),
            host_cpus=int(info.get("NCPU") or 1),
            host_memory_mb=int((info.get("MemTotal") or 0) // MiB),
            arch=_ARCH_NAMES.get(str(info.get("Architecture") or ""), str(info.get("Architecture") or "")),
        )

    async def image_facts(self, image: str) -> ImageFacts | None:
        """The image's platform and PATH from its config; None when the image is not in the engine."""
        try:
            data = await self.docker.images.inspect(image)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise BackendUnavailable(f"Docker image lookup failed: {exc.message}") from exc
        env = (data.get("Config") or {}).get("Env") or []
        path = next((e[5:] for e in env if e.startswith("PATH=")), "")
        return ImageFacts(os=str(data.get("Os") or ""), arch=str(data.get("Architecture") or ""), path=path)

    async def path_exists(self, container_id: str, path: str) -> bool:
        """Whether `path` exists in a created container's filesystem (`HEAD /containers/{id}/archive`,
        answered from the image's layers without starting anything). A link counts as existing."""
        # The raw session: a HEAD answer has no body, which aiodocker's error path tries to parse as JSON.
        try:
            await self.docker._check_version()
            url = self.docker._canonicalize_url(f"containers/{container_id}/archive", versioned_api=True)
            async with self.docker.session.request("HEAD", url, params={"path": path}) as resp:
                status = resp.status
        except (DockerError, aiohttp.ClientError) as exc:
            raise BackendUnavailable(f"Docker could not look into the container: {exc}") from exc
        if status in (200, 404):
            return status == 200
        raise BackendUnavailable(f"Docker could not look into the container: HTTP {status} for {path}")

    async def image_exists(self, image: str) -> bool:
        try:
            await self.docker.images.inspect(image)
            return True
        except DockerError as exc:
            if exc.status == 404:
                return False
            raise BackendUnavailable(f"Docker image lookup failed: {exc.message}") from exc

    async def create(self, spec: ContainerSpec) -> str:
        env = dict(spec.env)
        if spec.entrypoint:
            env["TLE_ENTRYPOINT"] = json.dumps(spec.entrypoint)
        config: dict[str, Any] = {
            "Image": spec.image,
            # the static Go agent as PID 1: it needs nothing from the image (no python, no libc)
            "Entrypoint": [AGENT_EXE_IN_SANDBOX, "--socket", f"{AGENT_DIR_IN_SANDBOX}/{AGENT_SOCKET_NAME}"],
            "Cmd": [],
            "Env": [f"{k}={v}" for k, v in env.items()],
            "User": "0:0",
            "Hostname": spec.sandbox_id[:63],
            "Labels": {**spec.labels, LABEL_SANDBOX: spec.sandbox_id, LABEL_INSTANCE: self._instance},
            "NetworkDisabled": not spec.network,
            "HostConfig": {
                "Runtime": spec.runtime,
                "NanoCpus": int(spec.cpus * 1e9),
                "Memory": spec.memory_mb * MiB,
                "MemorySwap": spec.memory_mb * MiB,
                "PidsLimit": spec.pids_limit,
                "Privileged": False,
                "CapDrop": ["ALL"],
                "CapAdd": _CAPS,
                "SecurityOpt": ["no-new-privileges"],
                "NetworkMode": "bridge" if spec.network else "none",
                "Binds": [  # the binary's folder first: the run folder is mounted on its empty run/
                    f"{spec.agent_code}:{AGENT_BIN_DIR_IN_SANDBOX}:ro",
                    f"{spec.agent_dir}:{AGENT_DIR_IN_SANDBOX}",
                ],
                "Init": False,
            },
        }
        try:
            container = await self.docker.containers.create(config, name=f"tle-{spec.sandbox_id}")
        except DockerError as exc:
            if exc.status == 404 and "image" in exc.message.lower():
                raise ImageNotFound(f"Image '{spec.image}' not found locally (no registry is reachable; "
                                    "build or load it into Docker first)") from exc
            if _runtime_unknown(exc.message, spec.runtime):
                raise RuntimeMissing(f"Container runtime '{spec.runtime}' is not available: {exc.message}") from exc
            raise EmulatorError(f"Docker refused to create the container: {exc.message}") from exc
        return container.id

    async def start(self, container_id: str) -> None:
        try:
            await self.docker.containers.container(container_id).start()
        except DockerError as exc:
            if _runtime_unknown(exc.message, self._runtime):
                raise RuntimeMissing(f"Container runtime '{self._runtime}' is not available: {exc.message}") from exc
            if "oci runtime" in exc.message.lower():
                # runc failed inside the image: the agent's executable could not be run in it (exec
                # refused, not found), or a mount point the sandbox needs is taken (a file at /.tle).
                raise ImageIncompatible("the image cannot run the sandbox agent: "
                                        f"{_start_failure(exc.message)}") from exc
            raise EmulatorError(f"Docker could not start the container: {exc.message}") from exc

    async def remove(self, container_id: str) -> None:
        try:
            await self.docker.containers.container(container_id).delete(force=True, v=True)
        except DockerError as exc:
            if exc.status not in (404, 409):
                raise BackendUnavailable(f"Docker could not remove the container: {exc.message}") from exc

    async def _inspect(self, container_id: str) -> dict[str, Any] | None:
        """`GET /containers/{id}/json`, None when the container is gone."""
        try:
            return dict(await self.docker.containers.container(container_id).show())
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise BackendUnavailable(f"Docker inspect failed: {exc.message}") from exc

    async def state(self, container_id: str) -> ContainerState | None:
        data = await self._inspect(container_id)
        if data is None:
            return None
        labels, st = data["Config"].get("Labels") or {}, data["State"]
        return ContainerState(data["Id"], labels.get(LABEL_SANDBOX, ""), bool(st.get("Running")), labels,
                              exit_code=st.get("ExitCode"), oom_killed=bool(st.get("OOMKilled")),
                              networks=(data.get("NetworkSettings") or {}).get("Networks") or {})

    async def exits(self) -> AsyncIterator[str]:
        """Ids of our containers as they die, from the Engine API's event stream (`GET /events`)."""
        filters = json.dumps({"type": ["container"], "event": ["die"],
                              "label": [f"{LABEL_INSTANCE}={self._instance}"]})
        try:
            async with self.docker._query("events", "GET", params={"filters": filters},
                                          timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
                async for line in resp.content:
                    if line.strip():
                        event = json.loads(line)
                        yield event.get("id") or event.get("Actor", {}).get("ID", "")
        except (DockerError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise BackendUnavailable(f"Docker event stream failed: {exc}") from exc

    async def init_pid(self, container_id: str) -> int | None:
        """Host pid of the container's PID 1 (the agent), or None when it is not running or gone."""
        data = await self._inspect(container_id)
        pid = int(data["State"].get("Pid") or 0) if data else 0
        return pid or None

    async def list_ours(self) -> list[ContainerState]:
        filters = json.dumps(instance_filter(self._instance))
        try:
            items = await self.docker.containers.list(all=True, filters=filters)
        except DockerError as exc:
            raise BackendUnavailable(f"Docker list failed: {exc.message}") from exc
        out = []
        for c in items:
            labels = c._container.get("Labels") or {}
            out.append(ContainerState(c.id, labels.get(LABEL_SANDBOX, ""),
                                      c._container.get("State") == "running", labels))
        return out

    async def update_resources(self, container_id: str, cpus: float, memory_mb: int) -> None:
        body = {"NanoCpus": int(cpus * 1e9), "Memory": memory_mb * MiB, "MemorySwap": memory_mb * MiB}
        data = await self._inspect(container_id)
        if data and (data.get("HostConfig") or {}).get("Runtime", "").startswith("runsc"):
            # runsc has no `update`: the host cgroup of its sandbox process takes the new limits
            pid = int((data.get("State") or {}).get("Pid") or 0)
            if not pid:
                raise EmulatorError("the sandbox is not running")
            await asyncio.to_thread(cgroup_resize.resize, pid, cpus, memory_mb)
            return
        try:
            await self.docker._query_json(f"containers/{container_id}/update", "POST", data=json.dumps(body))
        except DockerError as exc:
            raise EmulatorError(f"Docker could not resize the sandbox: {exc.message}") from exc

    async def commit(self, container_id: str, repo: str, tag: str) -> str:
        params = {"container": container_id, "repo": repo, "tag": tag, "pause": "false"}
        try:
            res = await self.docker._query_json("commit", "POST", params=params, data=json.dumps({}))
        except DockerError as exc:
            raise EmulatorError(f"Docker commit failed: {exc.message}") from exc
        return res["Id"]

    async def remove_image(self, ref: str) -> None:
        try:
            await self.docker.images.delete(ref, force=True)
        except DockerError as exc:
            if exc.status != 404:
                log.warning("could not remove image %s: %s", ref, exc.message)

    # --- checkpoints through Docker's own API (needs dockerd --experimental and CRIU) ---

    async def checkpoint(self, container_id: str, name: str, leave_running: bool) -> None:
        body = {"CheckpointID": name, "Exit": not leave_running}
        try:
            async with self.docker._query(f"containers/{container_id}/checkpoints", "POST",
                                          data=json.dumps(body), headers={"Content-Type": "application/json"},
                                          timeout=600):
                pass
        except DockerError as exc:
            raise EmulatorError(f"checkpoint failed: {exc.message}") from exc

    async def start_from_checkpoint(self, container_id: str, name: str) -> None:
        try:
            async with self.docker._query(f"containers/{container_id}/start", "POST",
                                          params={"checkpoint": name}, timeout=600):
                pass
        except DockerError as exc:
            raise EmulatorError(f"restore failed: {exc.message}") from exc

    async def delete_checkpoint(self, container_id: str, name: str) -> None:
        try:
            async with self.docker._query(f"containers/{container_id}/checkpoints/{name}", "DELETE"):
                pass
        except DockerError as exc:
            if exc.status != 404 and "does not exist" not in exc.message:
                log.warning("could not delete checkpoint %s of %s: %s", name, container_id, exc.message)

    async def signal(self, container_id: str, sig: str) -> None:
        """Send `sig` (e.g. "SIGUSR2") to the container's PID 1 (the agent). Raises EmulatorError."""
        try:
            await self.docker.containers.container(container_id).kill(signal=sig)
        except DockerError as exc:
            raise EmulatorError(f"could not signal the sandbox: {exc.message}") from exc

    async def pause(self, container_id: str) -> None:
        try:
            await self.docker.containers.container(container_id).pause()
        except DockerError as exc:
            raise EmulatorError(f"could not pause the sandbox: {exc.message}") from exc

    async def unpause(self, container_id: str) -> None:
        try:
            await self.docker.containers.container(container_id).unpause()
        except DockerError as exc:
            if exc.status != 409:  # 409: not paused
                raise EmulatorError(f"could not unpause the sandbox: {exc.message}") from exc

    async def list_paused_ours(self) -> list[str]:
        filters = json.dumps(instance_filter(self._instance, status=["paused"]))
        try:
            items = await self.docker.containers.list(all=True, filters=filters)
        except DockerError as exc:
            raise BackendUnavailable(f"Docker list failed: {exc.message}") from exc
        return [c.id for c in items]

    @contextlib.contextmanager
    def prune_exempt(self, label: str) -> Iterator[None]:
        """While open (nests), prune_dangling_ours leaves images carrying `label`: a running build's layers."""
        self._prune_exempt[label] += 1
        try:
            yield
        finally:
            self._prune_exempt[label] -= 1

    async def prune_dangling_ours(self) -> int:
        """Remove untagged images with our label (deleted snapshots no container uses); how many went.

        Skips images carrying a label held by prune_exempt; engine errors are swallowed.
        """
        filters = json.dumps(instance_filter(self._instance, dangling=["true"]))
        try:
            images = await self.docker.images.list(filters=filters)
        except DockerError:
            return 0
        removed = 0
        for img in images:
            if any(self._prune_exempt[label] > 0 for label in img.get("Labels") or {}):
                continue
            try:
                await self.docker.images.delete(img["Id"], noprune=False)
                removed += 1
            except DockerError:
                pass  # still used by a sandbox restored from it; a later sweep gets it
        return removed

    async def image_size(self, ref: str) -> int | None:
        """Bytes the image adds on top of its parent (a committed snapshot's filesystem diff)."""
        try:
            data = await self.docker.images.inspect(ref)
        except DockerError:
            return None
        parent = data.get("Parent")
        size = int(data.get("Size") or 0)
        if parent:
            try:
                size -= int((await self.docker.images.inspect(parent)).get("Size") or 0)
            except DockerError:
                pass
        return max(size, 0)

    async def run_canary(self, image: str, command: list[str]) -> str:
        """Create and start a tiny labelled container (the CRIU start-up probe); returns its id."""
        config: dict[str, Any] = {
            "Image": image, "Entrypoint": command, "Cmd": [],
            "Labels": {LABEL_INSTANCE: self._instance, LABEL_CANARY: "1"},
            "NetworkDisabled": True,
            # runc always: the canary proves CRIU, which only runc sandboxes use (docs/gvisor.md)
            "HostConfig": {"Runtime": "runc", "NetworkMode": "none", "Memory": 64 * MiB,
                           "MemorySwap": 64 * MiB, "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"]},
        }
        try:
            container = await self.docker.containers.create(config)
            await container.start()
        except DockerError as exc:
            raise EmulatorError(f"could not start the CRIU canary container: {exc.message}") from exc
        return container.id

    async def logs(self, container_id: str) -> str:
        try:
            lines = await self.docker.containers.container(container_id).log(stdout=True, stderr=True)
        except DockerError:
            return ""
        return "".join(lines)

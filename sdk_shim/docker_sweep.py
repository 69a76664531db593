"""Find and remove what an emulator created, by its Docker labels, and nothing else.

Every sandbox container carries `dev.tensorlake-emulator.instance=<hash of the data folder>` and,
when it belongs to a test session, `dev.tensorlake-emulator.session=<label>`. A snapshot image is a
`docker commit` of such a container, so it inherits the same labels. A sweep selects by exactly
one of these labels, so it can never touch a container or an image the emulator did not make.

The CLI (`tensorlake-emulator cleanup`) and the pytest plugin's reaper both use this module. The
functions are async (aiodocker); `run_sync` runs one on a private event loop in a worker thread, so
synchronous callers work whether or not an event loop is already running in their thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiodocker
from aiodocker.exceptions import DockerError

from emulator.backend.base import LABEL_INSTANCE, LABEL_NAMESPACE, LABEL_SANDBOX, LABEL_SESSION

T = TypeVar("T")
Progress = Callable[[str], None]
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def docker_host() -> str:
    return os.environ.get("TLE_DOCKER_HOST") or DEFAULT_DOCKER_HOST


@dataclass
class Found:
    """Containers and images that carry one label."""

    containers: list[dict[str, Any]] = field(default_factory=list)  # id, name, state, labels
    images: list[dict[str, Any]] = field(default_factory=list)  # id, tags, labels

    @property
    def sandbox_ids(self) -> set[str]:
        items = self.containers + self.images
        return {i["labels"][LABEL_SANDBOX] for i in items if i["labels"].get(LABEL_SANDBOX)}

    @property
    def namespaces(self) -> set[str]:
        items = self.containers + self.images
        return {i["labels"][LABEL_NAMESPACE] for i in items if i["labels"].get(LABEL_NAMESPACE)}


def session_selector(label: str) -> tuple[str, str]:
    return LABEL_SESSION, label


def instance_selector(instance: str) -> tuple[str, str]:
    return LABEL_INSTANCE, instance


async def find(key: str, value: str, host: str | None = None) -> Found:
    if not value:
        raise ValueError(f"refusing to select by an empty {key} label")
    filters = {"label": [f"{key}={value}"]}
    docker = aiodocker.Docker(url=host or docker_host())
    try:
        containers = await docker.containers.list(all=True, filters=filters)
        images = await docker.images.list(filters=filters)
    finally:
        await docker.close()
    found = Found()
    for c in containers:
        raw = c._container
        found.containers.append({
            "id": c.id, "name": (raw.get("Names") or ["?"])[0].lstrip("/"), "state": raw.get("State", "?"),
            "labels": raw.get("Labels") or {},
        })
    for img in images:
        found.images.append({"id": img["Id"], "tags": [t for t in img.get("RepoTags") or [] if t != "<none>:<none>"],
                             "labels": img.get("Labels") or {}})
    return found


async def remove(found: Found, host: str | None = None, progress: Progress | None = None) -> tuple[int, int]:
    """Remove the containers first (an image in use cannot go), then the images. Returns the counts removed."""
    say = progress or (lambda _msg: None)
    docker = aiodocker.Docker(url=host or docker_host())
    n_containers = n_images = 0
    try:
        for c in found.containers:
            say(f"removing container {c['name']} ({c['state']}, sandbox {c['labels'].get(LABEL_SANDBOX, '?')})")
            try:
                await docker.containers.container(c["id"]).delete(force=True, v=True)
                n_containers += 1
            except DockerError as exc:
                if exc.status != 404:
                    say(f"  could not remove {c['name']}: {exc.message}")
        for img in found.images:
            # Delete by tag first, then by id: an image tagged twice would otherwise refuse a plain id delete.
            refs = img["tags"] or [img["id"]]
            say(f"removing snapshot image {', '.join(refs)}")
            try:
                for ref in refs:
                    await docker.images.delete(ref, force=True)
                n_images += 1
            except DockerError as exc:
                if exc.status != 404:
                    say(f"  could not remove {refs[0]}: {exc.message}")
    finally:
        await docker.close()
    return n_containers, n_images


async def sweep(key: str, value: str, host: str | None = None, progress: Progress | None = None) -> tuple[int, int]:
    return await remove(await find(key, value, host), host, progress)


def run_sync(factory: Callable[[], Awaitable[T]], timeout: float = 300.0) -> T:
    """Run an async function to completion on a fresh loop in another thread (safe under a running loop)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(_call(factory))
        except BaseException as exc:  # handed back to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="tle-docker-sweep", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"Docker did not answer within {timeout}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _call(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


def sweep_sync(key: str, value: str, host: str | None = None, progress: Progress | None = None) -> tuple[int, int]:
    return run_sync(lambda: sweep(key, value, host, progress))


def find_sync(key: str, value: str, host: str | None = None) -> Found:
    return run_sync(lambda: find(key, value, host))

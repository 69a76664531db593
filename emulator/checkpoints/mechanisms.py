"""How a container's process tree is dumped and restored. The engine decides when and in which
order; a mechanism only moves memory to and from a folder.

`docker` (the default): Docker's own checkpoint API (dockerd --experimental, CRIU under runc).
Correct and portable, but containerd packs every dump into its content store and unpacks it again
on restore, which costs about 20 ms per MB of sandbox memory each way (see HOST.md).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path
from typing import Protocol

from emulator.backend.docker import DockerBackend


class Mechanism(Protocol):
    name: str

    async def dump_stop(self, container_id: str, name: str) -> None:
        """Dump the whole container under `name` and stop it (suspend)."""

    async def restore_in_place(self, container_id: str, name: str) -> None:
        """Start the stopped container again from the dump `name`, then forget the dump (resume)."""

    async def dump_running(self, container_id: str, name: str, dest: Path) -> None:
        """Dump the (frozen) container into `dest`, leaving it as it was (snapshot)."""

    async def restore_new(self, container_id: str, name: str, src: Path) -> None:
        """Start a freshly created container from the dump in `src` (restore into a new sandbox)."""


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """Hard-link a dump folder (same filesystem: instant, no extra space), else copy it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        shutil.rmtree(dst)
    try:
        shutil.copytree(src, dst, symlinks=True, copy_function=os.link)
    except OSError:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, symlinks=True)


def move_tree(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.move(str(src), str(dst))  # a rename on the same filesystem


class DockerMechanism:
    name = "docker"

    def __init__(self, backend: DockerBackend, docker_root: Path) -> None:
        self.backend = backend
        self.docker_root = docker_root

    def checkpoint_dir(self, container_id: str, name: str) -> Path:
        return self.docker_root / "containers" / container_id / "checkpoints" / name

    async def dump_stop(self, container_id: str, name: str) -> None:
        # A dump of the same name left by an earlier failed attempt would make Docker refuse.
        await self.backend.delete_checkpoint(container_id, name)
        await self.backend.checkpoint(container_id, name, leave_running=False)

    def _make_unique(self, container_id: str, name: str) -> None:
        # Docker uploads the dump folder as a tar into containerd's content store and fails with
        # "content sha256:... already exists" when an identical tar is still there (the blob of the
        # checkpoint that made this dump, before containerd's GC ran; or a second restore of the same
        # snapshot). CRIU ignores files it does not know, so a nonce file makes every upload unique.
        (self.checkpoint_dir(container_id, name) / "tle-restore-nonce").write_text(uuid.uuid4().hex)

    async def restore_in_place(self, container_id: str, name: str) -> None:
        await asyncio.to_thread(self._make_unique, container_id, name)
        await self.backend.start_from_checkpoint(container_id, name)
        await self.backend.delete_checkpoint(container_id, name)

    async def dump_running(self, container_id: str, name: str, dest: Path) -> None:
        await self.backend.delete_checkpoint(container_id, name)
        await self.backend.checkpoint(container_id, name, leave_running=True)
        await asyncio.to_thread(move_tree, self.checkpoint_dir(container_id, name), dest)

    async def restore_new(self, container_id: str, name: str, src: Path) -> None:
        await asyncio.to_thread(link_or_copy_tree, src, self.checkpoint_dir(container_id, name))
        await asyncio.to_thread(self._make_unique, container_id, name)
        try:
            await self.backend.start_from_checkpoint(container_id, name)
        finally:
            await self.backend.delete_checkpoint(container_id, name)

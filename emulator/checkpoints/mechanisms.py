"""How a container's process tree is dumped and restored. The engine decides when and in which
order; a mechanism only moves memory to and from a folder.

`docker`: Docker's own checkpoint API (dockerd --experimental, CRIU under runc). Correct and
portable, but containerd packs every dump into its content store and unpacks it again on restore,
which costs about 20 ms per MB of sandbox memory each way (see HOST.md).
`runc` (the default where it works): runc's own checkpoint for dumps, Docker's API for restores.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path
from typing import Protocol

from emulator.backend.docker import DockerBackend
from emulator.errors import EmulatorError


class Mechanism(Protocol):
    name: str

    def checkpoint_dir(self, container_id: str, name: str) -> Path:
        """Where the in-place dump `name` of a container lives."""

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


class RuncMechanism(DockerMechanism):
    """`runc`: dumps with runc directly on Docker's own container state (no containerd in the way),
    restores through Docker's API, which accepts a runc-made dump.

    A dump then costs what CRIU costs (HOST.md: 0.29 s for a 200 MB heap instead of 4-5 s); a
    restore still goes through containerd's content store (about 2.7 s for 200 MB), because this
    Docker refuses a custom checkpoint folder and only containerd may start a container it manages.
    Only for the runc runtime: it needs the state root Docker gives runc.
    """

    name = "runc"

    def __init__(self, backend: DockerBackend, docker_root: Path, runc_root: Path, runc: str = "runc") -> None:
        super().__init__(backend, docker_root)
        self.runc_root = runc_root
        self.runc = runc

    @staticmethod
    def available(runc_root: Path, runc: str = "runc") -> str | None:
        """None when usable, else why not."""
        if shutil.which(runc) is None:
            return f"{runc} is not on PATH"
        if not runc_root.is_dir():
            return f"Docker's runc state folder {runc_root} does not exist"
        return None

    async def _runc_checkpoint(self, container_id: str, dest: Path, leave_running: bool) -> None:
        await asyncio.to_thread(_fresh_dir, dest)
        work = dest.parent / f".{dest.name}.criu-work"
        await asyncio.to_thread(_fresh_dir, work)
        cmd = [self.runc, "--root", str(self.runc_root), "checkpoint", "--image-path", str(dest),
               "--work-path", str(work)]
        if leave_running:
            cmd.append("--leave-running")
        proc = await asyncio.create_subprocess_exec(*cmd, container_id, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            detail = out.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            log_tail = await asyncio.to_thread(_tail, work / "dump.log", 3)
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise EmulatorError(f"checkpoint failed: runc: {detail[0]}" + (f" (criu: {log_tail})" if log_tail else ""))
        await asyncio.to_thread(shutil.rmtree, work, True)

    async def dump_stop(self, container_id: str, name: str) -> None:
        await self._runc_checkpoint(container_id, self.checkpoint_dir(container_id, name), leave_running=False)
        # runc killed the container behind containerd's back: wait until Docker has seen it exit, so
        # that a resume right after finds a stopped container.
        for _ in range(200):
            state = await self.backend.state(container_id)
            if state is None or not state.running:
                return
            await asyncio.sleep(0.025)
        raise EmulatorError("the container did not stop after its checkpoint")

    async def dump_running(self, container_id: str, name: str, dest: Path) -> None:
        await self._runc_checkpoint(container_id, dest, leave_running=True)


def _fresh_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def _tail(path: Path, lines: int) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""

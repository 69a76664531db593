"""How a container's process tree is dumped and restored. The engine decides when and in which
order; a mechanism only moves memory to and from a folder.

`docker`: Docker's own checkpoint API (dockerd --experimental, CRIU under runc). Correct and
portable, but containerd packs every dump into its content store and unpacks it again on restore,
which costs about 20 ms per MB of sandbox memory each way (see docs/host.md).
`runc` (the default where it works): runc's own checkpoint for dumps, Docker's API for restores
with the memory pages linked rather than uploaded (see RuncMechanism).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Protocol

from emulator.backend.base import RuntimeBackend
from emulator.checkpoints import freezer
from emulator.checkpoints.containerd_leftovers import NONCE_FILE, remove_copy_of
from emulator.checkpoints.criu_errors import snapshot_failure
from emulator.checkpoints.preflight import DEFAULT_RUNC_ROOT, refuse_unrestorable
from emulator.errors import EmulatorError

log = logging.getLogger(__name__)


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

    async def discard(self, container_id: str, name: str) -> None:
        """Forget an in-place dump that will not be restored (the sandbox was terminated)."""

    async def sweep(self, live_container_ids: set[str]) -> None:
        """Remove dumps of containers not in `live_container_ids` (left by a crash)."""

    async def thaw(self, container_ids: list[str]) -> None:
        """Thaw those of the containers that a killed CRIU left frozen."""

    async def freeze(self, container_id: str) -> None:
        """Freeze a container through the runtime directly (`runc pause`), behind the engine's back."""

    async def before_dump(self, container_id: str) -> None:
        """Before the engine freezes a running container for a snapshot (gVisor: the agent's listener closes)."""

    async def after_dump(self, container_id: str) -> None:
        """After the engine thawed it again (gVisor: the agent's listener is bound again)."""


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

    def __init__(self, backend: RuntimeBackend, docker_root: Path,
                 runc_root: Path = Path("/run/docker/runtime-runc/moby"), runc: str = "runc") -> None:
        self.backend = backend
        self.docker_root = docker_root
        self.runc_root = runc_root
        self.runc = runc

    def checkpoint_dir(self, container_id: str, name: str) -> Path:
        return self.docker_root / "containers" / container_id / "checkpoints" / name

    async def dump_stop(self, container_id: str, name: str) -> None:
        # A dump of the same name left by an earlier failed attempt would make Docker refuse.
        await self.backend.delete_checkpoint(container_id, name)
        await self._checkpoint(container_id, name, leave_running=False)

    async def _checkpoint(self, container_id: str, name: str, leave_running: bool) -> None:
        await asyncio.to_thread(refuse_unrestorable, container_id, DEFAULT_RUNC_ROOT)
        try:
            await self.backend.checkpoint(container_id, name, leave_running=leave_running)
        except EmulatorError as exc:
            raise await asyncio.to_thread(snapshot_failure, exc.message) from exc

    def _make_unique(self, container_id: str, name: str) -> str:
        # Docker uploads the dump folder as a tar into containerd's content store and fails with
        # "content sha256:... already exists" when an identical tar is still there (the blob of the
        # checkpoint that made this dump, before containerd's GC ran; or a second restore of the same
        # snapshot). CRIU ignores files it does not know, so a nonce file makes every upload unique,
        # and it names containerd's leftover copy of this restore (containerd_leftovers.py).
        nonce = uuid.uuid4().hex
        (self.checkpoint_dir(container_id, name) / NONCE_FILE).write_text(nonce)
        return nonce

    async def _start_from(self, container_id: str, name: str, nonce: str) -> None:
        """Docker's restore, then removal of containerd's copy of the dump (whatever the outcome)."""
        try:
            await self.backend.start_from_checkpoint(container_id, name)
        finally:
            await asyncio.to_thread(remove_copy_of, nonce)

    async def restore_in_place(self, container_id: str, name: str) -> None:
        nonce = await asyncio.to_thread(self._make_unique, container_id, name)
        await self._start_from(container_id, name, nonce)
        await self.backend.delete_checkpoint(container_id, name)

    async def dump_running(self, container_id: str, name: str, dest: Path) -> None:
        await self.backend.delete_checkpoint(container_id, name)
        await self._checkpoint(container_id, name, leave_running=True)
        await asyncio.to_thread(move_tree, self.checkpoint_dir(container_id, name), dest)

    async def discard(self, container_id: str, name: str) -> None:
        pass  # the dump lives in the container's folder and goes with it

    async def before_dump(self, container_id: str) -> None:
        pass  # CRIU dumps the agent's socket as it is

    async def after_dump(self, container_id: str) -> None:
        pass

    async def sweep(self, live_container_ids: set[str]) -> None:
        pass  # dumps live in the containers' folders and go with them

    async def thaw(self, container_ids: list[str]) -> None:
        """Thaw containers a killed CRIU left frozen (runc reports them paused; Docker does not)."""
        await thaw_frozen(self.runc_root, self.runc, container_ids)

    async def freeze(self, container_id: str) -> None:
        proc = await asyncio.create_subprocess_exec(self.runc, "--root", str(self.runc_root), "pause", container_id,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        await proc.wait()

    async def restore_new(self, container_id: str, name: str, src: Path) -> None:
        await asyncio.to_thread(link_or_copy_tree, src, self.checkpoint_dir(container_id, name))
        nonce = await asyncio.to_thread(self._make_unique, container_id, name)
        try:
            await self._start_from(container_id, name, nonce)
        finally:
            await self.backend.delete_checkpoint(container_id, name)

    async def _wait_stopped(self, container_id: str) -> None:
        """Wait up to 8 s until Docker sees the container stopped after a dump that stopped it (the
        runtime kills it behind containerd's back; Docker notices a little later). Raises EmulatorError."""
        # Short steps: while Docker handles the exit (100-150 ms) an inspect waits for it anyway.
        for _ in range(1600):
            state = await self.backend.state(container_id)
            if state is None or not state.running:
                return
            await asyncio.sleep(0.005)
        raise EmulatorError("the container did not stop after its checkpoint")


class RuncMechanism(DockerMechanism):
    """`runc`: dumps with runc directly on Docker's own container state, into the emulator's data
    folder; restores through Docker's API with the memory pages *linked*, not uploaded.

    Why it is fast (docs/host.md has the baseline): Docker uploads the checkpoint folder into
    containerd's content store as a tar and containerd unpacks it again before `runc restore`,
    about 20 ms per MB each way. Here the folder handed to Docker holds copies of the small CRIU
    images and, for each `pages-*.img`, a relative symbolic link that climbs to `/` and down to the
    dump in our data folder. The tar carries the links, not the pages; CRIU follows them when it
    reads the pages (after the restored task entered the container's root, which is why the link
    is relative: `..` from a directory outside that root walks up the host's tree and stops at the
    host's `/`). Containerd still starts and owns the restored container, so every other Docker
    call keeps working. Only for the runc runtime: it needs the state root Docker gives runc.
    """

    name = "runc"

    def __init__(self, backend: RuntimeBackend, docker_root: Path, runc_root: Path, dump_root: Path,
                 runc: str = "runc") -> None:
        super().__init__(backend, docker_root, runc_root, runc)
        self.dump_root = dump_root
        self._cleanups: set[asyncio.Future[None]] = set()  # background removals of consumed dumps
        shutil.rmtree(dump_root / ".consumed", ignore_errors=True)  # left by a stop mid-removal

    @staticmethod
    def available(runc_root: Path, runc: str = "runc") -> str | None:
        """None when usable, else why not."""
        if shutil.which(runc) is None:
            return f"{runc} is not on PATH"
        if not runc_root.is_dir():
            return f"Docker's runc state folder {runc_root} does not exist"
        return None

    def checkpoint_dir(self, container_id: str, name: str) -> Path:
        return self.dump_root / container_id / name

    async def _runc_checkpoint(self, container_id: str, dest: Path, leave_running: bool, freeze: bool = False) -> None:
        work = dest.parent / f".{dest.name}.criu-work"
        if not await asyncio.to_thread(self._prepare_dump, container_id, dest, work, freeze) and freeze:
            await self.freeze(container_id)  # no cgroup v1 freezer to write: `runc pause`
        cmd = [self.runc, "--root", str(self.runc_root), "checkpoint", "--image-path", str(dest),
               "--work-path", str(work)]
        if leave_running:
            cmd.append("--leave-running")
        proc = await asyncio.create_subprocess_exec(*cmd, container_id, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            failure = await asyncio.to_thread(snapshot_failure, out.decode(errors="replace"), work / "dump.log")
            with contextlib.suppress(OSError):  # kept for diagnosis, next to the dumps
                await asyncio.to_thread(shutil.copy, work / "dump.log", self.dump_root / "last-failed-dump.log")
            await asyncio.to_thread(shutil.rmtree, work, True)
            await asyncio.to_thread(shutil.rmtree, dest, True)
            with contextlib.suppress(OSError):
                dest.parent.rmdir()  # the container's folder, if this was to be its only dump
            raise failure
        await asyncio.to_thread(shutil.rmtree, work, True)

    def _prepare_dump(self, container_id: str, dest: Path, work: Path, freeze: bool) -> bool:
        """Freeze (when `freeze`), checks and folders of a dump, in one thread hop; whether it froze the
        container. Raises SnapshotFailed (refuse_unrestorable)."""
        frozen = freeze and freezer.freeze(self.runc_root, container_id)
        refuse_unrestorable(container_id, self.runc_root)
        _fresh_dir(dest)
        _fresh_dir(work)
        return frozen

    async def dump_stop(self, container_id: str, name: str) -> None:
        # runc has killed the container behind containerd's back when this returns; Docker notices
        # the exit 50-150 ms later. A suspend is complete once the dump is written and the processes
        # are gone, so that wait is left to whoever needs Docker to agree (restore_in_place).
        # Frozen first (checkpoints/freezer.py: CRIU's own freezing waits in 100 ms steps). CRIU leaves
        # a cgroup it found frozen as it was; after the dump runc's destroy thaws and kills it. A dump
        # that fails leaves the processes frozen: they are thawed, and the sandbox keeps running.
        try:
            await self._runc_checkpoint(container_id, self.checkpoint_dir(container_id, name), leave_running=False,
                                        freeze=True)
        except BaseException:
            await self.thaw([container_id])
            raise

    async def restore_in_place(self, container_id: str, name: str) -> None:
        src = self.checkpoint_dir(container_id, name)
        await self._restore_linked(container_id, name, src, wait_stopped=True)
        # Consumed: the pages live in the sandbox again. Deleting hundreds of MB takes 50-150 ms, so
        # the folder is renamed out of the way (instant; a suspend right after writes a fresh one)
        # and removed in the background.
        trash = self.dump_root / ".consumed" / f"{container_id[:12]}-{name}-{uuid.uuid4().hex[:8]}"
        try:
            await asyncio.to_thread(_move_aside, src, trash)
        except OSError:
            await self.discard(container_id, name)
            return
        fut = asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, trash, True)
        self._cleanups.add(fut)
        fut.add_done_callback(self._cleanups.discard)

    async def dump_running(self, container_id: str, name: str, dest: Path) -> None:
        await self._runc_checkpoint(container_id, dest, leave_running=True)

    async def restore_new(self, container_id: str, name: str, src: Path) -> None:
        await self._restore_linked(container_id, name, src)

    async def discard(self, container_id: str, name: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.checkpoint_dir(container_id, name), True)
        with contextlib.suppress(OSError):
            (self.dump_root / container_id).rmdir()

    async def sweep(self, live_container_ids: set[str]) -> None:
        if not self.dump_root.is_dir():
            return
        for entry in self.dump_root.iterdir():
            if entry.is_dir() and entry.name not in live_container_ids:
                await asyncio.to_thread(shutil.rmtree, entry, True)

    async def _restore_linked(self, container_id: str, name: str, src: Path, wait_stopped: bool = False) -> None:
        """Docker's restore from the dump in `src`, after Docker has seen the container stop when
        `wait_stopped` (a suspend answers before it does). Raises EmulatorError."""
        if not (src / "inventory.img").is_file():
            raise EmulatorError(f"restore failed: the dump in {src} is missing")
        # Docker's folder is filled while Docker is still taking note of the exit.
        link = asyncio.ensure_future(asyncio.to_thread(_link_dump, src, super().checkpoint_dir(container_id, name)))
        try:
            try:
                if wait_stopped:
                    await self._wait_stopped(container_id)
            finally:
                nonce = await link
            await self._start_from(container_id, name, nonce)
        finally:
            await self.backend.delete_checkpoint(container_id, name)


def choose_mechanism(backend: RuntimeBackend, docker_root: Path, dump_root: Path, mode: str,
                     runtime: str, runc_root: Path) -> Mechanism:
    """TLE_CHECKPOINT: `runc` (dump with runc, restore through Docker), `docker` (Docker's API both
    ways), `auto` (runc where the runc runtime and Docker's runc state folder are there, else docker)."""
    if mode in ("auto", "runc") and runtime == "runc":
        why_not = RuncMechanism.available(runc_root)
        if why_not is None:
            return RuncMechanism(backend, docker_root, runc_root, dump_root)
        if mode == "runc":
            log.warning("TLE_CHECKPOINT=runc but %s: using Docker's checkpoint API", why_not)
    return DockerMechanism(backend, docker_root, runc_root)


async def thaw_frozen(runc_root: Path, runc: str, container_ids: list[str]) -> None:
    """`runc resume` each container whose freezer cgroup is frozen (`runc state` says paused)."""
    if RuncMechanism.available(runc_root, runc) is not None:
        return
    for cid in container_ids:
        state = await asyncio.create_subprocess_exec(runc, "--root", str(runc_root), "state", cid,
                                                     stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.DEVNULL)
        out, _ = await state.communicate()
        if state.returncode == 0 and json.loads(out or b"{}").get("status") == "paused":
            resume = await asyncio.create_subprocess_exec(runc, "--root", str(runc_root), "resume", cid)
            await resume.wait()


def _link_dump(src: Path, dst: Path) -> str:
    """Docker's checkpoint folder for `src`: small images copied, page images as relative links; returns
    the restore's nonce."""
    _fresh_dir(dst)
    climb = "../" * 64  # more than any folder depth containerd unpacks into; extra `..` stop at `/`
    for f in src.iterdir():
        if f.name.startswith("pages-") and f.name.endswith(".img"):
            os.symlink(climb + str(f.resolve()).lstrip("/"), dst / f.name)
        elif f.is_file():
            shutil.copy2(f, dst / f.name)
    # A unique file, so containerd never sees an upload identical to one it still holds.
    nonce = uuid.uuid4().hex
    (dst / NONCE_FILE).write_text(nonce)
    return nonce


def _move_aside(src: Path, trash: Path) -> None:
    trash.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, trash)
    with contextlib.suppress(OSError):
        src.parent.rmdir()  # the container's folder, when this was its only dump


def _fresh_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)

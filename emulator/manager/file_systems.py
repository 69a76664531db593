"""File systems (issue 15): the registry, their folders, and mounting them into sandboxes.

A file system is a folder `<data>/file-systems/<name>` with a record in SQLite, so both survive
restarts. Mounts are injected into the running container (backend/mount_inject.py) at launch (the
`file_systems` of a create, which a restored copy inherits), at a pool claim and by `attach`; `detach`
unmounts and keeps the data. Deleting a file system mounted in a live sandbox is refused (409).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from emulator.errors import (
    BadRequest,
    EmulatorError,
    FileSystemExists,
    FileSystemInUse,
    FileSystemNotFound,
    InvalidState,
    NotSupported,
)
from emulator.manager.context import ManagerContext
from emulator.model import file_systems as fsm
from emulator.model.file_systems import FileSystemRecord
from emulator.model.records import SandboxRecord
from emulator.model.states import SandboxStatus
from emulator.store.sqlite import Store

log = logging.getLogger("emulator.file_systems")
INJECT_SCRIPT = Path(__file__).resolve().parent.parent / "backend" / "mount_inject.py"
# The emulator serves one Artifact Storage project: the JWT `iss` of its credential (docs/protocol.md §6.9).
PROJECT = "default"


def _require_running(rec: SandboxRecord) -> None:
    if rec.status != SandboxStatus.running:
        raise InvalidState(f"Sandbox {rec.id} is {rec.status}: file systems attach to and detach from "
                           "running sandboxes")


class FileSystems:
    """The registry and the mount operations. Names are unique per emulator (one project)."""

    def __init__(self, ctx: ManagerContext, store: Store) -> None:
        self._ctx, self._store = ctx, store
        self.root = ctx.settings.data_dir / "file-systems"
        self._by_name: dict[str, FileSystemRecord] = {r.name: r for r in store.load_file_systems()}
        self._lock = asyncio.Lock()

    # ---- registry -----------------------------------------------------------------------------

    def all(self) -> list[FileSystemRecord]:
        return sorted(self._by_name.values(), key=lambda r: r.created_at)

    def get(self, name: str) -> FileSystemRecord:
        """Raises FileSystemNotFound."""
        rec = self._by_name.get(name)
        if rec is None:
            raise FileSystemNotFound(f"file system {name!r} not found")
        return rec

    def folder(self, name: str) -> Path:
        return self.root / name

    async def create(self, name: str, session_label: str | None) -> FileSystemRecord:
        """A new empty file system. Raises BadRequest (name), FileSystemExists (409)."""
        fsm.check_name(name)
        async with self._lock:
            if name in self._by_name:
                raise FileSystemExists(f"file system {name!r} already exists")
            self.folder(name).mkdir(parents=True, exist_ok=True)
            rec = FileSystemRecord(name=name, project=PROJECT, session_label=session_label)
            await self._store.save_file_system(rec)
            self._by_name[name] = rec
        return rec

    def users(self, name: str) -> list[str]:
        """Ids of the live sandboxes whose mounts name this file system."""
        return [r.id for r in self._ctx.table if r.live and any(m["file_system_id"] == name for m in r.file_systems)]

    async def delete(self, name: str) -> None:
        """Remove a file system and its data. Raises FileSystemNotFound, FileSystemInUse (mounted in a
        live sandbox: detach or terminate first)."""
        async with self._lock:
            self.get(name)
            users = self.users(name)
            if users:
                raise FileSystemInUse(f"file system {name!r} is mounted in sandbox(es) {', '.join(users)}; "
                                      "detach it or terminate them first")
            await self._store.delete_file_system(name)
            del self._by_name[name]
            await asyncio.to_thread(shutil.rmtree, self.folder(name), True)

    async def delete_scope(self, namespace: str | None, session: str | None) -> tuple[list[str], list[str]]:
        """Delete the file systems of a namespace (their project) and/or of a session (None: any).
        Returns (names deleted, error messages); one that is still mounted stays and is named."""
        deleted, errors = [], []
        for rec in self.all():
            if (namespace is None or rec.project == namespace) and (session is None or rec.session_label == session):
                try:
                    await self.delete(rec.name)
                    deleted.append(rec.name)
                except EmulatorError as exc:
                    errors.append(f"file system {rec.name}: {exc.message}")
        return deleted, errors

    # ---- mounts ---------------------------------------------------------------------------------

    def check_mounts(self, raw: list[dict[str, Any]], existing: list[dict[str, Any]] | None = None,
                     runtime: str | None = None) -> list[dict[str, Any]]:
        """Normalised mounts whose file systems exist, for a sandbox of `runtime` (None: the emulator's).
        Raises BadRequest (also for an unknown file system: the SDK reads a 404 on attach as "sandbox not
        found", which would hide the cause), NotSupported (mounts under gVisor)."""
        if raw and (runtime or self._ctx.settings.runtime) == "runsc":
            raise NotSupported("file system mounts need the runc runtime (gVisor keeps mounts inside its "
                               "sandbox kernel)")
        mounts = fsm.normalise_mounts(raw, existing or [])
        for m in mounts:
            if m["file_system_id"] not in self._by_name:
                raise BadRequest(f"file system {m['file_system_id']!r} not found (create it first with "
                                 "create_file_system)")
        return mounts

    async def _inject(self, rec: SandboxRecord, *args: str) -> None:
        assert rec.container_id is not None
        pid = await self._ctx.backend.init_pid(rec.container_id)
        if pid is None:
            raise EmulatorError(f"sandbox {rec.id} has no running container to mount into")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", str(INJECT_SCRIPT), args[0], str(pid), *args[1:],
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode == 2:
            raise BadRequest(err.decode(errors="replace").strip())
        if proc.returncode == 3:
            raise NotSupported("file system mounts need Linux 5.12+ (open_tree, move_mount, mount_setattr) and an "
                               f"emulator running as root: {err.decode(errors='replace').strip()}")
        if proc.returncode != 0:
            raise EmulatorError(f"mount in sandbox {rec.id} failed: {err.decode(errors='replace').strip()}")

    async def mount(self, rec: SandboxRecord, m: dict[str, Any], record: bool = False) -> None:
        """Put one (checked) mount into the sandbox's running container; `record`: also add it to the
        sandbox's mounts. Under the registry lock, so a delete never removes a file system being
        mounted (it sees the mount on record afterwards and refuses). Raises BadRequest (gone meanwhile)."""
        async with self._lock:
            if m["file_system_id"] not in self._by_name:
                raise BadRequest(f"file system {m['file_system_id']!r} not found")
            await self._inject(rec, "attach", str(self.folder(m["file_system_id"])), m["mount_path"],
                               "1" if m.get("read_only") else "0", m.get("owner") or "")
            if record:
                rec.file_systems = [*rec.file_systems, m]

    async def mount_all(self, rec: SandboxRecord, replace: bool = False) -> None:
        """The sandbox's recorded mounts, after its container (re)started or a dump (`replace`: first
        remove what may still be mounted there, so nothing is mounted twice). A file system deleted in
        the meantime is dropped from the record with a warning."""
        kept = []
        for m in rec.file_systems:
            if m["file_system_id"] not in self._by_name:
                log.warning("sandbox %s: file system %s is gone; mount %s dropped", rec.id, m["file_system_id"],
                            m["mount_path"])
                continue
            if replace:
                await self._unmount_quietly(rec, m["mount_path"])
            await self.mount(rec, m)
            kept.append(m)
        rec.file_systems = kept

    async def _unmount_quietly(self, rec: SandboxRecord, path: str) -> None:
        try:
            await self._inject(rec, "detach", path)
        except BadRequest:
            pass  # nothing mounted there

    async def restore_running(self) -> None:
        """At start-up: put back the mounts a running sandbox has on record but not in its container (a
        crash between a dump's unmount and its remount). What is mounted is left alone."""
        for rec in list(self._ctx.table):
            if rec.status != SandboxStatus.running or not rec.file_systems or not rec.container_id:
                continue
            pid = await self._ctx.backend.init_pid(rec.container_id)
            if pid is None:
                continue
            mounted = await asyncio.to_thread(_mount_points, pid)
            for m in rec.file_systems:
                if m["mount_path"] not in mounted:
                    try:
                        await self.mount(rec, m)
                    except EmulatorError as exc:
                        log.warning("sandbox %s: mount %s not restored: %s", rec.id, m["mount_path"], exc.message)

    async def unmount_all(self, rec: SandboxRecord) -> None:
        """Take the sandbox's mounts out of its container (before a CRIU dump); the record keeps them."""
        for m in rec.file_systems:
            await self._unmount_quietly(rec, m["mount_path"])

    async def attach(self, rec: SandboxRecord, raw: dict[str, Any]) -> SandboxRecord:
        """Mount one more file system into a running sandbox. Raises BadRequest (mount rules, duplicate
        path), FileSystemNotFound, InvalidState (not running)."""
        async with self._ctx.table.lock(rec.id):
            _require_running(rec)
            (m,) = self.check_mounts([raw], rec.file_systems, rec.runtime)
            await self.mount(rec, m, record=True)
            await self._ctx.table.save(rec)
        return rec

    async def detach(self, rec: SandboxRecord, mount_path: Any) -> SandboxRecord:
        """Unmount the file system at `mount_path`; its data stays. Raises BadRequest (no such mount),
        InvalidState (not running)."""
        async with self._ctx.table.lock(rec.id):
            _require_running(rec)
            path = fsm.check_mount_path(mount_path)
            if not any(m["mount_path"] == path for m in rec.file_systems):
                raise BadRequest(f"no file system is mounted at {path!r} in sandbox {rec.id}")
            await self._inject(rec, "detach", path)
            rec.file_systems = [m for m in rec.file_systems if m["mount_path"] != path]
            await self._ctx.table.save(rec)
        return rec


def _mount_points(pid: int) -> set[str]:
    """The mount points of a process's mount namespace, as paths inside it (/proc/<pid>/mountinfo field 5)."""
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            return {line.split()[4].replace("\\040", " ") for line in f if len(line.split()) > 4}
    except OSError:
        return set()

"""Checkpoints: suspend (dump and stop), resume (restore in place), snapshots (dump with the
sandbox left running plus a commit of its filesystem) and restores of snapshots into new sandboxes.

This engine drives CRIU through Docker's checkpoint API (dockerd --experimental). Snapshots live
under <data>/snapshots/<id>/ with their metadata in the store, so they survive restarts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from emulator.backend.base import LABEL_SNAPSHOT, ContainerSpec
from emulator.backend.docker import DockerBackend
from emulator.checkpoints.probe import CriuProbe
from emulator.errors import BadRequest, EmulatorError, NotFound, NotSupported
from emulator.manager.ids import new_snapshot_id
from emulator.manager.records import SandboxRecord, SnapshotRecord
from emulator.store.sqlite import Store

log = logging.getLogger(__name__)
SNAPSHOT_REPO = "tensorlake-emulator/snapshot"
SUSPEND_NAME = "suspend"


def _dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


class CheckpointEngine:
    def __init__(self, backend: DockerBackend, store: Store, data_dir: Path, docker_root: Path,
                 probe: CriuProbe) -> None:
        self.backend = backend
        self.store = store
        self.dir = data_dir / "snapshots"
        self.docker_root = docker_root
        self.probe = probe
        self._snapshots: dict[str, SnapshotRecord] = {}

    async def start(self) -> None:
        for snap in await asyncio.to_thread(self.store.load_snapshots):
            if snap.status == "in_progress":
                snap.status, snap.error = "failed", "the emulator stopped while this snapshot was being taken"
                await self.store.save_snapshot(snap)
            self._snapshots[snap.id] = snap

    @property
    def memory_available(self) -> bool:
        return self.probe.ok

    def require_memory(self, what: str) -> None:
        if not self.probe.ok:
            raise NotSupported(f"{what} is not supported on this host: {self.probe.reason}")

    # ---- suspend / resume in place ------------------------------------------------------------

    def _docker_checkpoint_dir(self, container_id: str, name: str) -> Path:
        return self.docker_root / "containers" / container_id / "checkpoints" / name

    async def suspend(self, rec: SandboxRecord) -> None:
        assert rec.container_id
        await self.backend.checkpoint(rec.container_id, SUSPEND_NAME, leave_running=False)
        rec.suspend_checkpoint = SUSPEND_NAME

    async def resume(self, rec: SandboxRecord) -> None:
        assert rec.container_id and rec.suspend_checkpoint
        await self.backend.start_from_checkpoint(rec.container_id, rec.suspend_checkpoint)
        await self.backend.delete_checkpoint(rec.container_id, rec.suspend_checkpoint)
        rec.suspend_checkpoint = None

    async def discard_suspend(self, rec: SandboxRecord) -> None:
        rec.suspend_checkpoint = None  # the dump lives in the container's folder, removed with it

    # ---- snapshots ----------------------------------------------------------------------------

    def get_snapshot(self, namespace: str, snapshot_id: str) -> SnapshotRecord:
        snap = self._snapshots.get(snapshot_id)
        if snap is None or snap.namespace != namespace:
            raise NotFound(f"Snapshot '{snapshot_id}' not found in namespace '{namespace}'")
        return snap

    def list_snapshots(self, namespace: str, sandbox_id: str | None = None) -> list[SnapshotRecord]:
        return sorted((s for s in self._snapshots.values() if s.namespace == namespace
                       and (sandbox_id is None or s.sandbox_id == sandbox_id)),
                      key=lambda s: s.created_at, reverse=True)

    def all_snapshots(self) -> list[SnapshotRecord]:
        return list(self._snapshots.values())

    def check_restorable(self, snap: SnapshotRecord, cpus: float | None, memory_mb: int | None) -> None:
        if snap.status not in ("local_ready", "completed"):
            detail = f": {snap.error}" if snap.error else ""
            raise BadRequest(f"Snapshot {snap.id} is {snap.status} and cannot be restored{detail}")
        if snap.snapshot_type == "memory":
            self.require_memory("restoring a memory snapshot")
            if memory_mb is not None and memory_mb != snap.memory_mb:
                raise BadRequest(f"A memory snapshot restores with its original memory_mb={snap.memory_mb}; "
                                 f"got {memory_mb}")

    async def new_snapshot(self, rec: SandboxRecord, kind: str) -> SnapshotRecord:
        snap = SnapshotRecord(
            id=new_snapshot_id(), namespace=rec.namespace, sandbox_id=rec.id, snapshot_type=kind,  # type: ignore[arg-type]
            base_image=rec.image, cpus=rec.cpus, memory_mb=rec.memory_mb, disk_mb=rec.disk_mb,
            entrypoint=rec.entrypoint, network_policy=rec.network_policy, exposed_ports=rec.exposed_ports,
            allow_unauthenticated_access=rec.allow_unauthenticated_access, timeout_secs=rec.timeout_secs,
            session_label=rec.session_label,
        )
        self._snapshots[snap.id] = snap
        await self.store.save_snapshot(snap)
        return snap

    async def take_snapshot(self, rec: SandboxRecord, snap: SnapshotRecord) -> None:
        assert rec.container_id
        try:
            tag = snap.id.replace("_", "-")
            if snap.snapshot_type == "memory":
                # Dump first, then commit: the commit pauses the container, so files match the memory
                # image as closely as Docker allows.
                await self.backend.checkpoint(rec.container_id, snap.id, leave_running=True)
                src = self._docker_checkpoint_dir(rec.container_id, snap.id)
                dst = self.dir / snap.id / "checkpoint"
                await asyncio.to_thread(self._move_tree, src, dst)
                await self.backend.delete_checkpoint(rec.container_id, snap.id)
                snap.checkpoint_dir = str(dst)
            await self.backend.commit(rec.container_id, SNAPSHOT_REPO, tag)
            snap.image_ref = f"{SNAPSHOT_REPO}:{tag}"
            snap.size_bytes = await asyncio.to_thread(_dir_size, self.dir / snap.id) if snap.checkpoint_dir else 0
            snap.status = "local_ready"
        except EmulatorError as exc:
            snap.status, snap.error = "failed", exc.message
        except OSError as exc:
            snap.status, snap.error = "failed", f"could not store the snapshot: {exc}"
        await self.store.save_snapshot(snap)

    @staticmethod
    def _move_tree(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, symlinks=True)

    async def restore_new(self, snap: SnapshotRecord, spec: ContainerSpec) -> str:
        assert snap.image_ref
        spec.image = snap.image_ref
        spec.labels[LABEL_SNAPSHOT] = snap.id
        cid = await self.backend.create(spec)
        if snap.snapshot_type == "memory":
            assert snap.checkpoint_dir
            await asyncio.to_thread(self._move_tree, Path(snap.checkpoint_dir),
                                    self._docker_checkpoint_dir(cid, snap.id))
            await self.backend.start_from_checkpoint(cid, snap.id)
            await self.backend.delete_checkpoint(cid, snap.id)
        else:
            await self.backend.start(cid)
        return cid

    async def delete_snapshot(self, snap: SnapshotRecord) -> None:
        snap.status = "deleting"
        self._snapshots.pop(snap.id, None)
        await self.store.delete_snapshot(snap.id)
        if snap.image_ref:
            await self.backend.remove_image(snap.image_ref)
        await asyncio.to_thread(shutil.rmtree, self.dir / snap.id, True)

    def describe(self) -> dict[str, Any]:
        return {"criu": self.probe.ok, "criu_detail": self.probe.reason, "mechanism": "docker-checkpoint"}


__all__ = ["CheckpointEngine", "EmulatorError"]

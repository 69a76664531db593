"""Checkpoints: suspend (dump and stop), resume (restore in place), snapshots (dump with the
sandbox left running plus a commit of its filesystem) and restores of snapshots into new sandboxes.

The engine owns the records, the ordering and the files; how a dump is made and restored is a
*mechanism* (emulator/checkpoints/mechanisms.py), chosen with TLE_CHECKPOINT (auto|runc|docker|off).
Snapshots live under <data>/snapshots/<id>/ (the CRIU dump in checkpoint/) with their metadata in the store, and a
committed image `tensorlake-emulator/snapshot:<id>` for the filesystem, so they survive restarts.

Ordering of a memory snapshot: the container is frozen (cgroup freezer, `docker pause`) first,
then its filesystem is committed and its memory dumped, then it is thawed. The files in the image
and the open-file sizes CRIU records therefore come from the same instant: CRIU refuses to restore
a process whose open file changed size between dump and restore, which a dump-then-commit order
gets as soon as a process is writing.

Connections: CRIU cannot dump a unix stream socket whose peer is outside the container, so the
manager closes the proxy's connections to the agent before any dump, and the proxy holds new data
plane requests while a dump runs. An open `follow` stream is such a connection too: it is cut when
a memory dump starts (the SDK's follow call returns early); following again after the resume or
restore replays the whole output, which lives in the agent's memory and so survives the dump.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from emulator.backend.base import LABEL_SNAPSHOT, ContainerSpec, RuntimeBackend
from emulator.checkpoints import containerd_leftovers
from emulator.checkpoints.gvisor import GVISOR_NO_CHECKPOINT, GVISOR_OFF, GvisorMechanism
from emulator.checkpoints.mechanisms import Mechanism
from emulator.checkpoints.probe import CriuProbe
from emulator.errors import BadRequest, EmulatorError, InvalidState, NotFound, NotSupported, SnapshotFailed
from emulator.labels import SNAPSHOT_REPO
from emulator.model.ids import new_snapshot_id
from emulator.model.records import SandboxRecord, SnapshotRecord
from emulator.model.runtimes import RUNSC, RUNSC_NONET, used_runtime
from emulator.store.sqlite import Store

log = logging.getLogger(__name__)
SUSPEND_NAME = "suspend"
# A trivial process tree for the start-up probe: a shell loop with a child, no network.
CANARY_CMD = ["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i >/tmp/canary; sleep 0.05; done"]


def dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


class CheckpointEngine:
    def __init__(self, backend: RuntimeBackend, store: Store, data_dir: Path, docker_root: Path,
                 probe: CriuProbe, mechanism: Mechanism, canary_image: str,
                 gvisor: GvisorMechanism | None = None) -> None:
        self.backend = backend
        self.store = store
        self.dir = data_dir / "snapshots"
        self.docker_root = docker_root
        self.probe = probe
        self.mechanism = mechanism
        # gVisor's own checkpoint, for gVisor sandboxes under runsc-nonet / runsc-netstack (None: Docker has neither)
        self.gvisor = gvisor
        self.gvisor_runtimes = gvisor.runtimes if gvisor is not None else ()  # those two, where Docker has them
        self.canary_image = canary_image
        self.canary: dict[str, Any] | None = None
        self._snapshots: dict[str, SnapshotRecord] = {}
        self._dump_failed: set[str] = set()  # sandboxes whose last suspend failed in CRIU's dump

    async def start(self) -> None:
        """Load the snapshots and settle what a stop or a crash cut off: snapshots being taken fail
        (their image and dump removed), transient ones (of a `copy`) go, frozen sandboxes thaw."""
        for snap in await asyncio.to_thread(self.store.load_snapshots):
            self._snapshots[snap.id] = snap
            if snap.transient:
                await self.delete_snapshot(snap)
            elif snap.status == "in_progress":
                snap.status, snap.error = "failed", "the emulator stopped while this snapshot was being taken"
                await self._drop_content(snap)
                await self.store.save_snapshot(snap)
        await asyncio.to_thread(self._sweep_snapshot_dirs)
        # A snapshot cut off by a stop may have left its sandbox paused (docker pause) or frozen by a
        # CRIU that was killed mid-dump (cgroup freezer; the engine still calls it running).
        for cid in await self.backend.list_paused_ours():
            log.info("thawing container %s left paused by an interrupted snapshot", cid[:12])
            try:
                await self.backend.unpause(cid)
            except EmulatorError as exc:
                # Docker paused it, then a CRIU dump cut off by the kill thawed it behind Docker's back:
                # freeze it again through runc, so that Docker's unpause finds what it expects.
                log.info("container %s: %s; re-freezing it so Docker can unpause it", cid[:12], exc.message)
                await self.mechanism.freeze(cid)
                try:
                    await self.backend.unpause(cid)
                except EmulatorError as again:
                    log.warning("container %s stays paused in Docker's view: %s", cid[:12], again.message)
        await self.mechanism.thaw([c.container_id for c in await self.backend.list_ours() if c.running])
        await self.backend.prune_dangling_ours()
        swept = await asyncio.to_thread(containerd_leftovers.sweep_stale)
        if swept:
            log.info("removed %d copies of old restores that containerd left in /tmp", swept)
        if self.probe.ok:
            await self.run_canary()

    async def run_canary(self) -> None:
        """Dump and restore a tiny container, so 'criu check' passing is not taken on trust. One
        retry: a transient hiccup of a busy host should not switch checkpoints off until restart."""
        base = self.probe.reason
        for attempt in (1, 2):
            self.probe.ok, self.probe.reason = True, base
            await self._canary_once()
            if self.canary and self.canary["ok"]:
                return
            if attempt == 1:
                log.info("checkpoints: the canary failed (%s); trying once more", self.probe.reason)
        log.warning("checkpoints: NOT SUPPORTED on this host: %s", self.probe.reason)

    async def _canary_once(self) -> None:
        image = self.canary_image
        t0 = time.monotonic()
        cid = None
        try:
            if not await self.backend.image_exists(image):
                raise EmulatorError(f"canary image {image} is missing")
            cid = await self.backend.run_canary(image, CANARY_CMD)
            await asyncio.sleep(0.2)
            await self.mechanism.dump_stop(cid, "canary")
            await self.mechanism.restore_in_place(cid, "canary")
            await asyncio.sleep(0.2)
            state = await self.backend.state(cid)
            if state is None or not state.running:
                raise EmulatorError("the restored canary did not keep running")
            secs = round(time.monotonic() - t0, 2)
            self.canary = {"ok": True, "seconds": secs}
            self.probe.reason = f"{self.probe.reason}; canary dump+restore ({self.mechanism.name}) passed in {secs}s"
            log.info("checkpoints: CRIU canary dump+restore through %s passed in %.2fs", self.mechanism.name, secs)
        except EmulatorError as exc:
            self.canary = {"ok": False, "error": exc.message}
            self.probe.ok = False
            self.probe.reason = f"the CRIU canary (dump and restore of a tiny container) failed: {exc.message}"
        finally:
            if cid is not None:
                await self.backend.remove(cid)
                await self.mechanism.discard(cid, "canary")

    def gvisor_checkpointable(self, opts: SandboxRecord | SnapshotRecord | None) -> bool:
        """Whether a gVisor sandbox (or its snapshot) runs under runsc-nonet or runsc-netstack (docs/gvisor.md)."""
        return opts is not None and used_runtime(opts.docker_runtime, opts.network_policy) in self.gvisor_runtimes

    def memory_available_for(self, runtime: str | None, opts: SandboxRecord | SnapshotRecord | None = None) -> bool:
        """Whether a sandbox of `runtime` (None: runc) and record `opts` can have its memory dumped (CRIU, gVisor's)."""
        if runtime == RUNSC:
            return self.gvisor_checkpointable(opts)
        return self.probe.ok

    def require_memory(self, what: str, runtime: str | None = None,
                       opts: SandboxRecord | SnapshotRecord | None = None) -> None:
        """Raises NotSupported, naming the cause, when `what` cannot be done for a sandbox of `runtime`."""
        if runtime == RUNSC:
            if self.gvisor_checkpointable(opts):
                return
            if self.gvisor is None:
                raise NotSupported(f"{what} of a gVisor (runsc) sandbox is not supported on this host: {GVISOR_OFF}")
            raise NotSupported(f"{what} of this gVisor (runsc) sandbox is not supported here: {GVISOR_NO_CHECKPOINT}")
        if not self.probe.ok:
            raise NotSupported(f"{what} is not supported on this host: {self.probe.reason}")

    # ---- suspend / resume in place ------------------------------------------------------------

    async def suspend(self, rec: SandboxRecord) -> None:
        """Dump the sandbox's processes and stop its container. Raises SnapshotFailed (the cause from
        CRIU's dump log) when CRIU cannot dump them; the container then keeps running."""
        assert rec.container_id
        self._dump_failed.discard(rec.id)
        try:
            try:
                await self._mech(rec.runtime).dump_stop(rec.container_id, SUSPEND_NAME)
            except EmulatorError as first:
                # A connection the agent had not yet closed when the dump started makes CRIU refuse
                # (external unix socket peer); by now it is gone, so one retry settles it.
                if isinstance(first, SnapshotFailed) and first.permanent:
                    raise
                log.info("suspend dump of %s failed, retrying once: %s", rec.id, first.message)
                await asyncio.sleep(0.5)
                await self._mech(rec.runtime).dump_stop(rec.container_id, SUSPEND_NAME)
        except SnapshotFailed:
            self._dump_failed.add(rec.id)
            raise
        rec.suspend_checkpoint = SUSPEND_NAME

    def transition_failure(self, sandbox_id: str, message: str) -> EmulatorError:
        """The error to answer for a suspend or resume that failed with `message`: SnapshotFailed
        (409 SNAPSHOT_FAILED) when CRIU could not dump the sandbox's process state, else
        InvalidState (409 INVALID_STATE)."""
        if sandbox_id in self._dump_failed:
            self._dump_failed.discard(sandbox_id)
            return SnapshotFailed(message)
        return InvalidState(message)

    async def resume(self, rec: SandboxRecord) -> None:
        assert rec.container_id and rec.suspend_checkpoint
        self._dump_failed.discard(rec.id)
        await self._mech(rec.runtime).restore_in_place(rec.container_id, rec.suspend_checkpoint)
        rec.suspend_checkpoint = None

    def has_suspend_dump(self, rec: SandboxRecord) -> bool:
        if not rec.container_id:
            return False
        mech = self._mech(rec.runtime)
        d = mech.checkpoint_dir(rec.container_id, SUSPEND_NAME)
        return (d / getattr(mech, "marker", "inventory.img")).is_file()

    def suspend_dump_dir(self, rec: SandboxRecord) -> Path | None:
        """Where a suspended sandbox's dump lies (for its size), None when it has none."""
        if not (rec.container_id and rec.suspend_checkpoint):
            return None
        return self._mech(rec.runtime).checkpoint_dir(rec.container_id, rec.suspend_checkpoint)

    def mark_suspended(self, rec: SandboxRecord) -> None:
        rec.suspend_checkpoint = SUSPEND_NAME

    async def discard_suspend(self, rec: SandboxRecord) -> None:
        if rec.container_id and rec.suspend_checkpoint:
            await self._mech(rec.runtime).discard(rec.container_id, rec.suspend_checkpoint)
        rec.suspend_checkpoint = None

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

    def list_all(self) -> list[SnapshotRecord]:
        """Every snapshot of every namespace, newest first."""
        return sorted(self._snapshots.values(), key=lambda s: s.created_at, reverse=True)

    def check_restorable(self, snap: SnapshotRecord, cpus: float | None, memory_mb: int | None) -> None:
        if snap.status not in ("local_ready", "completed"):
            detail = f": {snap.error}" if snap.error else ""
            raise BadRequest(f"Snapshot {snap.id} is {snap.status} and cannot be restored{detail}")
        if snap.snapshot_type == "memory":
            self.require_memory("restoring a memory snapshot", snap.runtime, snap)
            if memory_mb is not None and memory_mb != snap.memory_mb:
                raise BadRequest(f"A memory snapshot restores with its original memory_mb={snap.memory_mb}; "
                                 f"got {memory_mb}")

    async def new_snapshot(self, rec: SandboxRecord, kind: str, transient: bool = False) -> SnapshotRecord:
        snap = SnapshotRecord(transient=transient,
            id=new_snapshot_id(), namespace=rec.namespace, sandbox_id=rec.id, snapshot_type=kind,  # type: ignore[arg-type]
            base_image=rec.image, session_label=rec.session_label, file_systems=list(rec.file_systems),
            docker_runtime=rec.docker_runtime, **rec.options(),
        )
        self._snapshots[snap.id] = snap
        await self.store.save_snapshot(snap)
        return snap

    async def take_snapshot(self, rec: SandboxRecord, snap: SnapshotRecord) -> None:
        assert rec.container_id
        cid = rec.container_id
        tag = snap.id.replace("_", "-")
        dump = self.dir / snap.id / "checkpoint"
        try:
            if snap.snapshot_type == "memory":
                snap.image_ref = f"{SNAPSHOT_REPO}:{tag}"
                try:
                    await self._commit_and_dump(cid, snap.id, tag, dump, rec.runtime)
                except EmulatorError as first:
                    if isinstance(first, SnapshotFailed) and first.permanent:
                        raise
                    # As in suspend: a connection the agent had not yet closed makes CRIU refuse. The
                    # container must run again for the agent to close it, so the retry takes a new
                    # frozen state, files and memory together (the first image would not match it).
                    log.info("snapshot dump of %s failed, retrying once: %s", rec.id, first.message)
                    await self.backend.remove_image(snap.image_ref)
                    await asyncio.sleep(0.5)
                    await self._commit_and_dump(cid, snap.id, tag, dump, rec.runtime)
                snap.checkpoint_dir = str(dump)
            else:
                await self.backend.commit(cid, SNAPSHOT_REPO, tag)  # Docker pauses around the commit
                snap.image_ref = f"{SNAPSHOT_REPO}:{tag}"
            snap.status = "local_ready"
            await self.store.save_snapshot(snap)
            dump_bytes = await asyncio.to_thread(dir_size, dump) if snap.checkpoint_dir else 0
            rootfs = await self.backend.image_size(snap.image_ref)
            snap.size_bytes = dump_bytes + (rootfs or 0)
            # Stored on this host's disk (store, image store, dump folder): as durable as it gets
            # locally, so `checkpoint(wait_until="completed")` finishes too.
            snap.status = "completed"
        except EmulatorError as exc:
            snap.status, snap.error = "failed", exc.message
        except OSError as exc:
            snap.status, snap.error = "failed", f"could not store the snapshot: {exc}"
        if snap.status == "failed":
            log.warning("snapshot %s of %s failed: %s", snap.id, rec.id, snap.error)
            await asyncio.to_thread(shutil.rmtree, self.dir / snap.id, True)
            if snap.image_ref:
                await self.backend.remove_image(snap.image_ref)
                snap.image_ref = None
        await self.store.save_snapshot(snap)

    async def _commit_and_dump(self, cid: str, snap_id: str, tag: str, dump: Path, runtime: str | None) -> None:
        """Freeze the container, commit its files as SNAPSHOT_REPO:`tag` and dump its processes into
        `dump` (left running), then thaw it: one consistent state. Raises what commit or dump raise.
        Under gVisor the agent closes its listener first and binds it again after (checkpoints/gvisor.py)."""
        mech = self._mech(runtime)
        await mech.before_dump(cid)
        try:
            await self.backend.pause(cid)
            try:
                await self.backend.commit(cid, SNAPSHOT_REPO, tag)
                await mech.dump_running(cid, snap_id, dump)
            finally:
                await self.backend.unpause(cid)
        finally:
            await mech.after_dump(cid)

    async def restore_new(self, snap: SnapshotRecord, spec: ContainerSpec) -> str:
        if snap.image_ref is None or (snap.snapshot_type == "memory" and snap.checkpoint_dir is None):
            raise EmulatorError(f"Snapshot {snap.id} has no stored content")
        spec.image = snap.image_ref
        spec.labels[LABEL_SNAPSHOT] = snap.id
        mech = self._mech(snap.runtime)
        if snap.snapshot_type == "memory" and isinstance(mech, GvisorMechanism):
            spec.runtime = snap.docker_runtime or RUNSC_NONET  # gVisor's state restores under the runtime that wrote it
        cid = await self.backend.create(spec)
        try:
            if snap.snapshot_type == "memory":
                assert snap.checkpoint_dir
                await mech.restore_new(cid, snap.id, Path(snap.checkpoint_dir))
            else:
                await self.backend.start(cid)
        except BaseException:
            await self.backend.remove(cid)
            raise
        return cid

    async def delete_snapshot(self, snap: SnapshotRecord) -> None:
        snap.status = "deleting"
        self._snapshots.pop(snap.id, None)
        await self.store.delete_snapshot(snap.id)
        await self._drop_content(snap)

    async def _drop_content(self, snap: SnapshotRecord) -> None:
        if snap.image_ref:
            # Sandboxes restored from it keep running on its layers: the tag goes now, the layers
            # when the last of them is gone (swept here and at start-up).
            await self.backend.remove_image(snap.image_ref)
        elif snap.status == "failed":
            await self.backend.remove_image(f"{SNAPSHOT_REPO}:{snap.id.replace('_', '-')}")  # a commit cut off
        await self.backend.prune_dangling_ours()
        await asyncio.to_thread(shutil.rmtree, self.dir / snap.id, True)

    def _sweep_snapshot_dirs(self) -> None:
        """Folders under <data>/snapshots/ with no snapshot record (a delete cut off) go."""
        if self.dir.is_dir():
            for entry in self.dir.iterdir():
                if entry.name not in self._snapshots or self._snapshots[entry.name].status == "failed":
                    shutil.rmtree(entry, ignore_errors=True)

    async def forget_suspend(self, rec: SandboxRecord) -> None:
        """A suspend or resume cut off with the sandbox running: its (partial or consumed) dump goes."""
        if rec.container_id:
            await self._mech(rec.runtime).discard(rec.container_id, SUSPEND_NAME)
        rec.suspend_checkpoint = None

    async def sweep_dumps(self, live_container_ids: set[str]) -> None:
        """Dumps of containers that no longer exist (a terminate cut off) go."""
        await self.mechanism.sweep(live_container_ids)  # gVisor's live in the containers' folders

    def _mech(self, runtime: str | None) -> Mechanism:
        """The mechanism for a sandbox or snapshot of `runtime`: gVisor's own for runsc, else CRIU's."""
        if runtime == RUNSC and self.gvisor is not None:
            return self.gvisor
        return self.mechanism

    def describe(self) -> dict[str, Any]:
        return {"criu": self.probe.ok, "criu_detail": self.probe.reason, "criu_version": self.probe.version,
                "mechanism": self.mechanism.name, "canary": self.canary,
                "memory_snapshots": self.probe.ok, "filesystem_snapshots": True,
                "gvisor_mechanism": self.gvisor.name if self.gvisor else None,
                "gvisor_runtimes": list(self.gvisor_runtimes)}


__all__ = ["CheckpointEngine", "EmulatorError"]

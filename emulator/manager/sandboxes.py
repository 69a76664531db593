"""SandboxManager: the one entry of the HTTP layers into sandbox behaviour (docs/protocol.md §11).

It owns every sandbox's state machine; records move only through `SandboxTable.move` (the table
of legal moves is `model.states.TRANSITIONS`), each move persisted before the engine acts, so a
crash mid-way is reconciled on the next start (manager/reconcile.py). Background work (launch,
dumps, restores) runs in the manager's own tasks; callers get records and answers, never tasks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from emulator import metrics
from emulator.agent_channel import AgentEndpoint
from emulator.agent_client import AgentClients
from emulator.backend.base import RuntimeBackend
from emulator.checkpoints.engine import CheckpointEngine
from emulator.clock import CLOCK
from emulator.config import Settings
from emulator.errors import (
    BadRequest,
    EmulatorError,
    InvalidState,
    RuntimeMissing,
    SandboxNotFound,
    SandboxNotReady,
    SandboxNotRunning,
)
from emulator.manager import egress, images, reaper, reserve, suspension, warm, watch
from emulator.manager.context import ManagerContext
from emulator.manager.launch import launch
from emulator.manager.pool_table import PoolTable
from emulator.manager.pools import PoolManager
from emulator.manager.reconcile import reconcile
from emulator.manager.reset import reset as reset_scope
from emulator.manager.run_dirs import RunDirs
from emulator.manager.table import SandboxTable
from emulator.model.ids import new_sandbox_id
from emulator.model.records import ResourceResize, SandboxOptions, SandboxRecord, SnapshotRecord, now_ms
from emulator.model.spec import SandboxSpec
from emulator.model.states import SandboxStatus
from emulator.store.sqlite import Store

MIN_MEMORY_MB = 32
CLOCK_META = "clock_offset_ms"  # the store's meta key of the advanced clock's offset
S = SandboxStatus


class SandboxManager:
    """Create, look up, change and end sandboxes; snapshots; the proxy's routing.

    `clock()` gives epoch ms to the timeout reaper (tests inject their own); by default the emulator's
    clock (emulator/clock.py), which `POST /emulator/clock/advance` moves forward.
    """

    def __init__(self, settings: Settings, store: Store, backend: RuntimeBackend, agents: AgentClients,
                 checkpoints: CheckpointEngine, clock: Callable[[], float] = now_ms) -> None:
        self._ctx = ManagerContext(settings=settings, table=SandboxTable(store), backend=backend, agents=agents,
                                   checkpoints=checkpoints, run_dirs=RunDirs(settings.data_dir),
                                   pools=PoolTable(store))
        self._clock = clock
        self._reaper: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self.pools = PoolManager(self._ctx, self._check_resources)

    @property
    def settings(self) -> Settings:
        return self._ctx.settings

    @property
    def engine(self) -> Any:
        return self._ctx.engine

    # ---- start-up and shutdown ---------------------------------------------------------------

    async def start(self, reap: bool = True) -> None:
        """Load the records, reconcile them with the engine, start the timeout reaper."""
        ctx = self._ctx
        ctx.engine = await ctx.backend.info()
        ctx.table.load(await asyncio.to_thread(ctx.table.store.load_sandboxes))
        offset = await asyncio.to_thread(ctx.table.store.get_meta, CLOCK_META)
        if offset:
            CLOCK.restore(int(offset))  # deadlines on record were set against the advanced clock
        ctx.pools.load(await asyncio.to_thread(ctx.pools.store.load_pools))
        await reconcile(ctx)
        await egress.reapply_running(ctx)
        await reserve.ensure_reserve(ctx)
        if reap:
            self._reaper = asyncio.create_task(reaper.reap_forever(ctx, self._clock), name="timeout-reaper")
            self._watch = asyncio.create_task(watch.watch_exits(ctx), name="exit-watch")
            self._keeper = asyncio.create_task(warm.keep_forever(ctx, self.pools.wake), name="pool-keeper")

    async def stop(self) -> None:
        """Stop background work; terminate the live sandboxes when TLE_TERMINATE_ON_EXIT is set."""
        for task in (self._reaper, self._watch, self._keeper):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._ctx.tasks.stop()
        if self.settings.terminate_on_exit:
            for rec in self._ctx.table:
                if rec.live:
                    await self._ctx.terminate(rec, "emulator_shutdown", "Success(UserTerminated)")
            await self.pools.remove_all_warm()
        else:
            await self.pools.remove_all_warm(reserve_only=True)
        await self._ctx.agents.close_all()

    async def reap_once(self, now: float) -> list[tuple[str, str]]:
        """One pass of the timeout reaper at `now` (epoch ms); what it did, as (sandbox id, action)."""
        return await reaper.reap_once(self._ctx, now)

    async def advance_clock(self, seconds: float) -> list[tuple[str, str]]:
        """Move the emulator's clock forward (persisted) and act on the deadlines now passed at once.

        Raises ValueError for seconds out of (0, clock.MAX_ADVANCE_SECS]. Returns what the reaper did.
        """
        async with self._ctx.reap_lock:  # the background pass must not take the new time's work first
            offset = CLOCK.advance(seconds)
            fired = await reaper.reap_held(self._ctx, self._clock())
        await self._ctx.table.store.set_meta(CLOCK_META, str(offset))
        return fired

    async def reset(self, namespace: str | None, session: str | None) -> dict[str, Any]:
        """Terminate and delete every sandbox and snapshot of a namespace and/or a session label
        (None: any); the report of manager/reset.py."""
        return await reset_scope(self._ctx, self.terminate, namespace, session)

    async def keep_pools_once(self) -> None:
        """One pass of the pool reconciler (queued claims, warm targets): what its task does each second."""
        await warm.keep_once(self._ctx)

    # ---- lookups -----------------------------------------------------------------------------

    def lookup(self, namespace: str, ident: str) -> SandboxRecord:
        return self._ctx.table.lookup(namespace, ident)

    def list_sandboxes(self, namespace: str) -> list[SandboxRecord]:
        return self._ctx.table.in_namespace(namespace)

    def inventory(self) -> tuple[list[SandboxRecord], list[SnapshotRecord]]:
        """Every sandbox and snapshot record of every namespace (for metrics)."""
        return list(self._ctx.table), self._ctx.checkpoints.list_all()

    def resolve_route(self, ident: str) -> SandboxRecord:
        return self._ctx.table.resolve_route(ident)

    # ---- create ------------------------------------------------------------------------------

    def _check_resources(self, cpus: float | None, memory_mb: int | None) -> None:
        engine = self._ctx.engine
        assert engine is not None
        if cpus is not None and not (0 < cpus <= engine.host_cpus):
            raise BadRequest(f"cpus must be > 0 and at most the host's {engine.host_cpus}; got {cpus}")
        if memory_mb is not None and not (MIN_MEMORY_MB <= memory_mb <= engine.host_memory_mb):
            raise BadRequest(f"memory_mb must be between {MIN_MEMORY_MB} and the host's "
                             f"{engine.host_memory_mb}; got {memory_mb}")

    async def create(self, namespace: str, spec: SandboxSpec) -> SandboxRecord:
        """A pending sandbox record, its launch started. Raises BadRequest, NameConflict, NotFound
        (snapshot), ImageNotFound, ImageIncompatible, RuntimeMissing, NotSupported (memory snapshot without CRIU)."""
        ctx, t0 = self._ctx, time.monotonic()
        if spec.name is not None:
            ctx.table.check_name(namespace, spec.name)
        if spec.auto_resume is False and spec.name is None:
            raise BadRequest("auto_resume=false requires a named sandbox")
        if spec.disk_mb is not None and spec.disk_mb <= 0:
            raise BadRequest(f"disk_mb must be > 0; got {spec.disk_mb}")
        if spec.timeout_secs is not None and spec.timeout_secs < 0:
            raise BadRequest(f"timeout_secs must be >= 0; got {spec.timeout_secs}")
        self._check_resources(spec.cpus, spec.memory_mb)
        egress.check_host(spec.network_policy)
        await egress.resolve(spec.network_policy)  # an unresolvable host name is a 400 now, not a failed launch
        snap: SnapshotRecord | None = None
        base = SandboxOptions(disk_mb=self.settings.default_disk_mb)
        image = spec.image or self.settings.default_image
        if spec.snapshot_id is not None:
            snap = ctx.checkpoints.get_snapshot(namespace, spec.snapshot_id)
            ctx.checkpoints.check_restorable(snap, spec.cpus, spec.memory_mb)
            base, image = snap, snap.base_image
        assert ctx.engine is not None
        if self.settings.runtime not in ctx.engine.runtimes:
            raise RuntimeMissing(f"Container runtime '{self.settings.runtime}' is not installed in the Docker "
                                 f"engine (available: {', '.join(ctx.engine.runtimes)})")
        if snap is None:
            await images.check_image(ctx, image)  # ImageNotFound, ImageIncompatible (another architecture)
        # A running container of the warm reserve when one fits (manager/reserve.py), else a launch.
        warm_entry = None if snap is not None else await reserve.take(ctx, namespace, spec, image,
                                                                      self.pools.take_warm)
        rec = SandboxRecord(
            id=warm_entry.sandbox_id if warm_entry else new_sandbox_id(), namespace=namespace, name=spec.name,
            image=image, **spec.resolve(base), auto_resume=True if spec.auto_resume is None else spec.auto_resume,
            max_pending_secs=spec.max_pending_secs, restored_from=spec.snapshot_id,
            session_label=spec.session_label, container_id=warm_entry.container_id if warm_entry else None,
        )
        await ctx.table.add(rec)
        if warm_entry is not None:
            ctx.set_deadline(rec)
            await ctx.table.move(rec, S.running)
            metrics.count("create", "success", time.monotonic() - t0)
            self.pools.wake.set()  # refill the reserve
        else:
            ctx.tasks.spawn("launch", rec.id, metrics.timed("restore" if snap else "create", launch(ctx, rec, snap),
                                                            ok=lambda: rec.status == S.running))
        return rec

    async def wait_started(self, rec: SandboxRecord, timeout: float) -> None:
        """Wait up to `timeout` seconds for a launch to end (running or terminated)."""
        await self._ctx.tasks.wait("launch", rec.id, timeout)

    # ---- update ------------------------------------------------------------------------------

    async def update(self, rec: SandboxRecord, changes: dict[str, Any]) -> SandboxRecord:
        """PATCH (docs/protocol.md §6.3): name, auto_resume, ports, auth, network policy, or resources alone."""
        if not rec.live:
            raise InvalidState(f"Sandbox {rec.id} is terminated")
        if "resources" in changes:
            return await self._resize(rec, changes["resources"] or {})
        if "name" in changes:
            name = changes["name"]
            if name is None:
                raise BadRequest("name cannot be null")
            self._ctx.table.check_name(rec.namespace, name, exclude=rec.id)
        if changes.get("auto_resume") is False and not (changes.get("name") or rec.name):
            raise BadRequest("auto_resume=false requires a named sandbox")
        if "network" in changes:
            # Enforced first: a policy that cannot be put in force changes nothing at all.
            await egress.update(self._ctx, rec, changes["network"])
        for key in ("name", "auto_resume", "exposed_ports", "allow_unauthenticated_access"):
            if key in changes and changes[key] is not None:
                setattr(rec, key, changes[key])
        await self._ctx.table.save(rec)
        return rec

    async def _resize(self, rec: SandboxRecord, res: dict[str, Any]) -> SandboxRecord:
        cpus = res.get("cpus", rec.cpus)
        memory_mb = res.get("memory_mb", rec.memory_mb)
        disk_mb = res.get("disk_mb", rec.disk_mb)
        self._check_resources(cpus, memory_mb)
        if disk_mb != rec.disk_mb:
            raise BadRequest("disk_mb cannot be changed on a live sandbox by this emulator")
        gen = (rec.resource_resize.generation + 1) if rec.resource_resize else 1
        requested = {"cpus": cpus, "memory_mb": memory_mb, "disk_mb": disk_mb}
        async with self._ctx.table.lock(rec.id):
            if rec.status != S.running or not rec.container_id:
                raise InvalidState(f"Sandbox {rec.id} can be resized only while running (it is {rec.status})")
            try:
                await self._ctx.backend.update_resources(rec.container_id, cpus, memory_mb)
            except EmulatorError as exc:
                rec.resource_resize = ResourceResize(generation=gen, requested=requested, status="failed",
                                                     error_message=exc.message)
            else:
                rec.cpus, rec.memory_mb = cpus, memory_mb
                rec.resource_resize = ResourceResize(generation=gen, requested=requested, status="succeeded")
            await self._ctx.table.save(rec)
        return rec

    # ---- terminate ---------------------------------------------------------------------------

    async def terminate(self, rec: SandboxRecord) -> None:
        """End a sandbox (idempotent). A pending one is cancelled at once; otherwise after the
        container work in progress on it."""
        if not rec.live:
            return
        if rec.status == S.pending:
            await self._ctx.terminate(rec, "cancelled", "Success(UserTerminated)")
            return
        async with self._ctx.table.lock(rec.id):
            await self._ctx.terminate(rec, "user_terminated", "Success(UserTerminated)")

    # ---- suspend / resume --------------------------------------------------------------------

    async def suspend(self, rec: SandboxRecord, wait: float | None) -> bool:
        """Start a suspend and wait up to `wait` s; True once suspended. A suspend that ended without
        suspending raises InvalidState with the cause (docs/protocol.md §6.5)."""
        started = await suspension.start_suspend(self._ctx, rec)
        return await self._settle(rec, "suspend", S.suspended, started, wait)

    async def resume(self, rec: SandboxRecord, wait: float | None) -> bool:
        """Start a resume and wait up to `wait` s; True once running. Failure as for `suspend`."""
        started = await suspension.start_resume(self._ctx, rec)
        return await self._settle(rec, "resume", S.running, started, wait)

    async def _settle(self, rec: SandboxRecord, kind: Any, target: SandboxStatus, started: bool,
                      wait: float | None) -> bool:
        task = self._ctx.tasks.running(kind, rec.id)
        if task is not None and wait:
            await asyncio.wait({task}, timeout=wait)
        if rec.status == target:
            return True
        if started and (task is None or task.done()):
            # It ended without reaching the target (a failed dump or restore): say why, rather than a
            # 202 that would leave the SDK polling for a state that will not come.
            failure = self._ctx.transition_errors.pop(rec.id, None)
            if failure:
                raise self._ctx.checkpoints.transition_failure(rec.id, failure)
        return False

    # ---- snapshots ---------------------------------------------------------------------------

    async def snapshot(self, rec: SandboxRecord, snapshot_type: str | None) -> SnapshotRecord:
        """Start a checkpoint of a running sandbox; the record is `in_progress` until it is taken."""
        return await suspension.start_snapshot(self._ctx, rec, snapshot_type)

    def get_snapshot(self, namespace: str, snapshot_id: str) -> SnapshotRecord:
        return self._ctx.checkpoints.get_snapshot(namespace, snapshot_id)

    def list_snapshots(self, namespace: str, sandbox_id: str | None = None) -> list[SnapshotRecord]:
        return self._ctx.checkpoints.list_snapshots(namespace, sandbox_id)

    async def delete_snapshot(self, namespace: str, snapshot_id: str) -> None:
        cp = self._ctx.checkpoints
        await cp.delete_snapshot(cp.get_snapshot(namespace, snapshot_id))

    def describe_checkpoints(self) -> dict[str, Any]:
        return self._ctx.checkpoints.describe()

    async def copy(self, rec: SandboxRecord, times: int, timeout: float) -> list[SandboxRecord]:
        """`copy(times=N)`: a snapshot of the sandbox (memory where CRIU works), restored N times."""
        if times < 1 or times > 32:
            raise BadRequest(f"times must be between 1 and 32; got {times}")
        snap = await suspension.start_snapshot(self._ctx, rec, None, transient=True)
        await self._ctx.tasks.wait("snapshot", rec.id, timeout)
        if snap.status not in ("local_ready", "completed"):
            raise EmulatorError(f"copy of {rec.id} failed: snapshot {snap.id} is {snap.status}"
                                + (f": {snap.error}" if snap.error else ""))
        spec = SandboxSpec(snapshot_id=snap.id, session_label=rec.session_label)
        copies = [await self.create(rec.namespace, spec) for _ in range(times)]
        await asyncio.gather(*(self.wait_started(c, timeout) for c in copies))
        # The copies own their dumps and image layers now; the intermediate snapshot is not kept.
        if all(c.status != S.pending for c in copies):
            await self._ctx.checkpoints.delete_snapshot(snap)
        return copies

    # ---- proxy support -----------------------------------------------------------------------

    async def agent_unreachable(self, sandbox_id: str, cause: str) -> EmulatorError | None:
        """The proxy could not reach an agent: the 404 to answer when the sandbox has died (now
        marked terminated with the reason), None when it lives and a retry may succeed."""
        return await watch.agent_unreachable(self._ctx, sandbox_id, cause)

    async def ready_for_traffic(self, ident: str) -> tuple[SandboxRecord, AgentEndpoint]:
        """The sandbox a data-plane request goes to, waking it first when auto_resume allows.

        Raises SandboxNotFound (404: unknown or terminated), SandboxNotReady (503: retry),
        SandboxNotRunning (503).
        """
        ctx = self._ctx
        rec = self.resolve_route(ident)
        if rec.status == S.snapshotting:
            # A new connection into the agent would break the dump: hold the request until it ends.
            await ctx.tasks.wait("snapshot", rec.id, 2.5)
            if rec.status == S.snapshotting:
                raise SandboxNotReady(f"Sandbox {rec.id} is being checkpointed")
        if rec.status == S.running:
            return rec, ctx.run_dirs.endpoint(rec)
        resuming = rec.status == S.pending and rec.suspend_checkpoint is not None
        if (rec.status == S.suspended and rec.auto_resume) or resuming:
            await suspension.start_resume(ctx, rec)
            await ctx.tasks.wait("resume", rec.id, 2.5)
            if rec.status == S.running:
                return rec, ctx.run_dirs.endpoint(rec)
            raise SandboxNotReady(f"Sandbox {rec.id} is resuming")
        if rec.status == S.pending or (rec.status == S.suspending and rec.auto_resume):
            raise SandboxNotReady(f"Sandbox {rec.id} is not ready yet (state: {rec.status})")
        if rec.status == S.terminated:
            # 404, not 503: the SDK would retry a 503 for seconds, and a terminated sandbox never returns.
            raise SandboxNotFound(f"Sandbox {rec.id} is terminated ({rec.termination_reason})")
        raise SandboxNotRunning(f"Sandbox not running (state: {rec.status})")

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
    RuntimeMissing,
    SandboxNotFound,
    SandboxNotReady,
    SandboxNotRunning,
)
from emulator.manager import egress, faults, image_checks, peek, reaper, reserve, suspension, update, warm, watch
from emulator.manager.context import ManagerContext
from emulator.manager.file_systems import FileSystems
from emulator.manager.images import ImageService
from emulator.manager.launch import launch
from emulator.manager.pool_table import PoolTable
from emulator.manager.pools import PoolManager
from emulator.manager.reconcile import reconcile
from emulator.manager.reset import ResetScope, ResetStep, default_steps
from emulator.manager.reset import reset as reset_scope
from emulator.manager.run_dirs import RunDirs
from emulator.manager.table import SandboxTable
from emulator.model.ids import new_sandbox_id
from emulator.model.records import SandboxOptions, SandboxRecord, SnapshotRecord, now_ms
from emulator.model.runtimes import split_image
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
        self.images: ImageService | None = None  # set by the server; a reset removes its images too
        self.file_systems = FileSystems(self._ctx, store)
        self._ctx.file_systems = self.file_systems
        self._reset_steps: list[ResetStep] = default_steps(self.terminate)
        self.faults = faults.FaultControl(self._ctx)  # injected faults: the API's and the proxy's way in
        self.add_reset_step(self._images_step, before=None)

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
        await self.file_systems.restore_running()
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
        """Terminate and delete every sandbox, pool, snapshot, file system, built image and fault of a
        namespace and/or a session label (None: any); the report of manager/reset.py."""
        return await reset_scope(self._ctx, self._reset_steps, namespace, session)

    def add_reset_step(self, step: ResetStep, before: str | None = "forget_step") -> None:
        """Run `step(ctx, scope, report)` in every reset (built images): before the step of that
        function name (default: before the sandbox records are forgotten), or last."""
        names = [getattr(s, "__name__", "") for s in self._reset_steps]
        self._reset_steps.insert(names.index(before) if before in names else len(names), step)

    async def _images_step(self, ctx: ManagerContext, scope: ResetScope, report: dict[str, list[str]]) -> None:
        """The reset step of the sandbox images built in the scope (manager/images.py), run last."""
        if self.images is None:
            return
        try:
            report["images"].extend(await self.images.reset(scope.namespace, scope.session))
        except EmulatorError as exc:
            report["errors"].append(f"images: {exc.message}")

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

    def all_pools(self) -> list[Any]:
        """Every user pool (PoolRecord) of every namespace, not the emulator's own warm reserve (dashboard)."""
        return [p for p in self._ctx.pools if not p.reserve]

    async def agent_json(self, sandbox_id: str, path: str) -> Any:
        """GET `path` from a running sandbox's agent without waking it (the dashboard); manager/peek.py."""
        return await peek.agent_json(self._ctx, sandbox_id, path)

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
        image, runtime = split_image(spec.image or self.settings.default_image)
        mounts = self.file_systems.check_mounts(spec.file_systems or [], runtime=runtime)
        if spec.snapshot_id is not None:
            snap = ctx.checkpoints.get_snapshot(namespace, spec.snapshot_id)
            ctx.checkpoints.check_restorable(snap, spec.cpus, spec.memory_mb)
            # a restore runs under the runtime that made the snapshot (its dump is that runtime's format)
            base, image, runtime = snap, snap.base_image, snap.runtime
            if spec.file_systems is None:
                mounts = list(snap.file_systems)  # inherited; launch drops one whose file system is gone
        runtime = runtime or self.settings.runtime
        spec = spec.model_copy(update={"runtime": runtime})
        assert ctx.engine is not None
        if runtime not in ctx.engine.runtimes:
            raise RuntimeMissing(f"Container runtime '{runtime}' is not installed in the Docker engine (available: "
                                 f"{', '.join(ctx.engine.runtimes)}; `tensorlake-emulator setup` installs gVisor "
                                 "as 'runsc' where it can)")
        if snap is None:
            await image_checks.check_image(ctx, image)  # ImageNotFound, ImageIncompatible (another architecture)
        fault = faults.take_create(ctx, namespace, spec.name, spec.session_label)
        # A running container of the warm reserve when one fits (manager/reserve.py), else a launch.
        warm_entry = None if snap is not None or fault is not None else await reserve.take(
            ctx, namespace, spec, image, self.pools.take_warm)
        rec = SandboxRecord(
            id=warm_entry.sandbox_id if warm_entry else new_sandbox_id(), namespace=namespace, name=spec.name,
            image=image, **spec.resolve(base), auto_resume=True if spec.auto_resume is None else spec.auto_resume,
            max_pending_secs=spec.max_pending_secs, restored_from=spec.snapshot_id,
            session_label=spec.session_label, container_id=warm_entry.container_id if warm_entry else None,
            file_systems=mounts,
        )
        if warm_entry is not None:
            rec.docker_runtime = warm_entry.docker_runtime  # the reserve container's (a launch sets its own)
        await ctx.table.add(rec)
        if warm_entry is not None:
            if mounts:
                await self._mount_into_warm(rec)
            ctx.set_deadline(rec)
            await ctx.table.move(rec, S.running)
            metrics.count("create", "success", time.monotonic() - t0)
            self.pools.wake.set()  # refill the reserve
        else:
            ctx.tasks.spawn("launch", rec.id, metrics.timed("restore" if snap else "create",
                                                            launch(ctx, rec, snap, fault),
                                                            ok=lambda: rec.status == S.running))
        return rec

    async def _mount_into_warm(self, rec: SandboxRecord) -> None:
        """The create's file systems into the reserve container it took, before it is reported running
        (about 0.2 s, against 1.5 s and more for a cold start). A failure ends the sandbox and is raised."""
        try:
            await self.file_systems.mount_all(rec)
        except EmulatorError as exc:
            await self._ctx.terminate(rec, exc.code, f"Failure({exc.code})", error_details=exc.message)
            raise

    async def wait_started(self, rec: SandboxRecord, timeout: float) -> None:
        """Wait up to `timeout` seconds for a launch to end (running or terminated)."""
        await self._ctx.tasks.wait("launch", rec.id, timeout)

    # ---- update ------------------------------------------------------------------------------

    async def update(self, rec: SandboxRecord, changes: dict[str, Any]) -> SandboxRecord:
        """PATCH (docs/protocol.md §6.3): name, auto_resume, ports, auth, network policy, or resources alone
        (manager/update.py). Raises InvalidState, BadRequest, Conflict (a taken name)."""
        return await update.apply(self._ctx, rec, changes, self._check_resources)

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
        """The checkpoint engine's facts, and whether gVisor sandboxes' egress rules are enforced on the host."""
        return {**self._ctx.checkpoints.describe(), "gvisor_host_egress_rules": egress.host_rules_available(self._ctx)}

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

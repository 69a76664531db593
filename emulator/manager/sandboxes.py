"""SandboxManager: owns every sandbox's state machine (PROTOCOL.md §11).

Each transition is persisted before the engine acts on it, so a crash mid-way is reconciled on
the next start. The HTTP layers call this module; it calls the backend and the checkpoint
engine, never the other way round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from emulator.agent_channel import AGENT_SOCKET_NAME, AgentEndpoint
from emulator.agent_client import AgentClients
from emulator.backend.base import (
    LABEL_NAMESPACE,
    LABEL_SESSION,
    ContainerSpec,
    EngineInfo,
    RuntimeBackend,
)
from emulator.checkpoints.engine import CheckpointEngine
from emulator.config import Settings
from emulator.errors import (
    BadRequest,
    EmulatorError,
    EphemeralSandbox,
    ImageNotFound,
    InvalidState,
    NameConflict,
    NotFound,
    RuntimeMissing,
    SandboxNotFound,
    SandboxNotReady,
    SandboxNotRunning,
)
from emulator.manager.ids import new_sandbox_id, valid_name
from emulator.manager.records import ResourceResize, SandboxRecord, now_ms
from emulator.store.sqlite import Store

log = logging.getLogger(__name__)
AGENT_CODE = Path(__file__).resolve().parent.parent / "agent"  # the agent package, run as a directory
MIN_MEMORY_MB = 32


class SandboxManager:
    def __init__(self, settings: Settings, store: Store, backend: RuntimeBackend, agents: AgentClients,
                 checkpoints: CheckpointEngine) -> None:
        self.settings = settings
        self.store = store
        self.backend = backend
        self.agents = agents
        self.checkpoints = checkpoints
        self.engine: EngineInfo | None = None
        self._sandboxes: dict[str, SandboxRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._transition_errors: dict[str, str] = {}

    # ---- start-up and shutdown ---------------------------------------------------------------

    async def start(self) -> None:
        self.engine = await self.backend.info()
        for rec in await asyncio.to_thread(self.store.load_sandboxes):
            self._sandboxes[rec.id] = rec
        await self._reconcile()
        self._reaper = asyncio.create_task(self._reap_loop(), name="timeout-reaper")

    async def stop(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.settings.terminate_on_exit:
            for rec in list(self._sandboxes.values()):
                if rec.live:
                    await self._terminate(rec, "emulator_shutdown", "Success(UserTerminated)")
        await self.agents.close_all()

    async def _reconcile(self) -> None:
        containers = {c.sandbox_id: c for c in await self.backend.list_ours()}
        for rec in self._sandboxes.values():
            if not rec.live:
                continue
            c = containers.pop(rec.id, None)
            if rec.status in ("suspended", "suspending") or rec.suspend_checkpoint:
                # Suspended, or a suspend/resume cut off by the stop: a stopped container with its
                # dump is suspended (and resumes later); a running one is running.
                if c is None:
                    await self._mark_terminated(rec, "container_lost", "the suspended sandbox's container is gone")
                    continue
                if not c.running and self.checkpoints.has_suspend_dump(rec):
                    if rec.status != "suspended":
                        log.info("sandbox %s: interrupted transition, its dump is complete: suspended", rec.id)
                    self.checkpoints.mark_suspended(rec)
                    rec.status, rec.pending_reason, rec.deadline_ms = "suspended", None, None
                    await self.store.save_sandbox(rec)
                    continue
                rec.suspend_checkpoint = None
            if c is None:
                await self._mark_terminated(rec, "container_lost",
                                            "its container disappeared while the emulator was stopped")
            elif not c.running:
                await self.backend.remove(c.container_id)
                await self._mark_terminated(rec, "container_exited",
                                            "its container stopped while the emulator was stopped")
            elif rec.status != "running":
                # A transition was cut off by the restart; the container runs, so the sandbox does.
                rec.status, rec.pending_reason = "running", None
                await self.store.save_sandbox(rec)
        for orphan in containers.values():
            log.info("removing orphan container %s (sandbox %s)", orphan.container_id[:12], orphan.sandbox_id)
            await self.backend.remove(orphan.container_id)
        self._sweep_run_dirs()

    def _sweep_run_dirs(self) -> None:
        """Remove the host folders of sandboxes that are no longer live (left by a crash)."""
        root = self.settings.data_dir / "run"
        if not root.is_dir():
            return
        for entry in root.iterdir():
            rec = self._sandboxes.get(entry.name)
            if rec is None or not rec.live:
                self._remove_run_dir(entry.name) if entry.is_dir() else entry.unlink(missing_ok=True)

    # ---- lookups -----------------------------------------------------------------------------

    def lookup(self, namespace: str, ident: str) -> SandboxRecord:
        rec = self._sandboxes.get(ident)
        if rec is not None and rec.namespace == namespace:
            return rec
        for rec in self._sandboxes.values():
            if rec.namespace == namespace and rec.name == ident and rec.live:
                return rec
        raise NotFound(f"Sandbox '{ident}' not found in namespace '{namespace}'")

    def list_sandboxes(self, namespace: str) -> list[SandboxRecord]:
        return sorted((r for r in self._sandboxes.values() if r.namespace == namespace),
                      key=lambda r: r.created_at, reverse=True)

    def run_dir(self, sandbox_id: str) -> Path:
        """The host folder bind-mounted at /.tle/run: written by the sandbox, so never trusted."""
        return self.settings.data_dir / "run" / sandbox_id

    def endpoint(self, rec: SandboxRecord) -> AgentEndpoint:
        return AgentEndpoint(rec.id, self.run_dir(rec.id), rec.container_id)

    def _make_run_dir(self, sandbox_id: str) -> Path:
        # 0700 on both levels: no other local user can reach an agent socket (root in the sandbox).
        # The sandbox can chmod its own folder, never the parent it cannot see.
        parent = self.settings.data_dir / "run"
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        parent.chmod(0o700)
        path = self.run_dir(sandbox_id)
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def _clear_stale_socket(self, sandbox_id: str) -> None:
        # unlink never follows a link; whatever the sandbox left there goes.
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir(sandbox_id) / AGENT_SOCKET_NAME).unlink()

    def _remove_run_dir(self, sandbox_id: str) -> None:
        # rmtree works on dir fds with O_NOFOLLOW here (shutil.rmtree.avoids_symlink_attacks), so links
        # the sandbox planted are removed, not followed; nothing it wrote outlives it on the host.
        shutil.rmtree(self.run_dir(sandbox_id), ignore_errors=True)

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- create ------------------------------------------------------------------------------

    def _check_resources(self, cpus: float | None, memory_mb: int | None) -> None:
        assert self.engine is not None
        if cpus is not None and not (0 < cpus <= self.engine.host_cpus):
            raise BadRequest(f"cpus must be > 0 and at most the host's {self.engine.host_cpus}; got {cpus}")
        if memory_mb is not None and not (MIN_MEMORY_MB <= memory_mb <= self.engine.host_memory_mb):
            raise BadRequest(f"memory_mb must be between {MIN_MEMORY_MB} and the host's "
                             f"{self.engine.host_memory_mb}; got {memory_mb}")

    def _check_name(self, namespace: str, name: str, exclude: str | None = None) -> None:
        if not valid_name(name):
            raise BadRequest(f"Invalid sandbox name '{name}': use 1-63 letters, digits, '-' or '_', "
                             "starting with a letter or digit")
        for r in self._sandboxes.values():
            if r.namespace == namespace and r.name == name and r.live and r.id != exclude:
                raise NameConflict(f"A sandbox named '{name}' already exists in namespace '{namespace}' ({r.id})")

    async def create(self, namespace: str, *, image: str | None, cpus: float | None, memory_mb: int | None,
                     disk_mb: int | None, timeout_secs: int | None, entrypoint: list[str] | None,
                     network: dict[str, Any] | None, name: str | None, auto_resume: bool | None,
                     exposed_ports: list[int] | None, allow_unauthenticated_access: bool | None,
                     max_pending_secs: int | None, snapshot_id: str | None,
                     session_label: str | None = None) -> SandboxRecord:
        if name is not None:
            self._check_name(namespace, name)
        if auto_resume is False and name is None:
            raise BadRequest("auto_resume=false requires a named sandbox")
        if disk_mb is not None and disk_mb <= 0:
            raise BadRequest(f"disk_mb must be > 0; got {disk_mb}")
        if timeout_secs is not None and timeout_secs < 0:
            raise BadRequest(f"timeout_secs must be >= 0; got {timeout_secs}")
        self._check_resources(cpus, memory_mb)
        snap = None
        if snapshot_id is not None:
            snap = self.checkpoints.get_snapshot(namespace, snapshot_id)
            self.checkpoints.check_restorable(snap, cpus, memory_mb)
            image = snap.base_image
        image = image or self.settings.default_image
        assert self.engine is not None
        if self.settings.runtime not in self.engine.runtimes:
            raise RuntimeMissing(f"Container runtime '{self.settings.runtime}' is not installed in the Docker "
                                 f"engine (available: {', '.join(self.engine.runtimes)})")
        if snap is None and not await self.backend.image_exists(image):
            raise ImageNotFound(f"Image '{image}' not found locally; no registry is reachable, so build or "
                                "load it into Docker first (docker images lists what is there)")
        rec = SandboxRecord(
            id=new_sandbox_id(), namespace=namespace, name=name, image=image,
            cpus=cpus if cpus is not None else (snap.cpus if snap else 1.0),
            memory_mb=memory_mb if memory_mb is not None else (snap.memory_mb if snap else 1024),
            disk_mb=disk_mb if disk_mb is not None else (snap.disk_mb if snap else self.settings.default_disk_mb),
            timeout_secs=timeout_secs if timeout_secs is not None else (snap.timeout_secs if snap else None),
            entrypoint=entrypoint if entrypoint is not None else (snap.entrypoint if snap else None),
            network_policy=network if network is not None else (snap.network_policy if snap else None),
            auto_resume=True if auto_resume is None else auto_resume,
            exposed_ports=exposed_ports if exposed_ports is not None else (snap.exposed_ports if snap else []),
            allow_unauthenticated_access=bool(allow_unauthenticated_access) if allow_unauthenticated_access
            is not None else (snap.allow_unauthenticated_access if snap else False),
            max_pending_secs=max_pending_secs, restored_from=snapshot_id, session_label=session_label,
        )
        self._sandboxes[rec.id] = rec
        await self.store.save_sandbox(rec)
        self._ready[rec.id] = asyncio.Event()
        self._spawn(self._launch(rec, snap), f"launch-{rec.id}")
        return rec

    def _spec(self, rec: SandboxRecord, image: str) -> ContainerSpec:
        agent_dir = self._make_run_dir(rec.id)
        net = rec.network_policy
        return ContainerSpec(
            sandbox_id=rec.id, image=image, cpus=rec.cpus, memory_mb=rec.memory_mb,
            pids_limit=self.settings.pids_limit,
            network=not (net is not None and net.get("allow_internet_access") is False),
            agent_dir=agent_dir, agent_code=AGENT_CODE, entrypoint=rec.entrypoint,
            env={"TLE_OUTPUT_LIMIT_BYTES": str(self.settings.agent_output_limit)},
            labels={LABEL_NAMESPACE: rec.namespace, **({LABEL_SESSION: rec.session_label}
                                                       if rec.session_label else {})},
        )

    async def _launch(self, rec: SandboxRecord, snap: Any) -> None:
        try:
            async with self._lock(rec.id):
                if rec.status != "pending":
                    return  # cancelled before it started
                rec.pending_reason = "waiting_for_container"
                self._clear_stale_socket(rec.id)
                if snap is not None:
                    rec.container_id = await self.checkpoints.restore_new(snap, self._spec(rec, snap.base_image))
                else:
                    rec.container_id = await self.backend.create(self._spec(rec, rec.image))
                    await self.store.save_sandbox(rec)
                    await self.backend.start(rec.container_id)
                if rec.status != "pending":
                    # Terminated (cancelled) while the container was being made: do not leak it.
                    await self.backend.remove(rec.container_id)
                    return
                await self.store.save_sandbox(rec)
                if not await self.agents.wait_healthy(self.endpoint(rec), self.settings.startup_timeout):
                    raise EmulatorError(f"the sandbox agent did not answer within {self.settings.startup_timeout}s "
                                        "(does the image have python3 >= 3.9 on PATH?)")
                if rec.status != "pending":
                    return
                rec.status, rec.pending_reason, rec.started_at = "running", None, now_ms()
                self._set_deadline(rec)
                await self.store.save_sandbox(rec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of a launch ends the sandbox, with the reason on record
            log.warning("sandbox %s failed to start: %s", rec.id, exc)
            reason = exc.code if isinstance(exc, EmulatorError) else "StartupError"
            message = exc.message if isinstance(exc, EmulatorError) else f"{type(exc).__name__}: {exc}"
            await self._terminate(rec, reason, f"Failure({reason})", error_details=message)
        finally:
            self._ready.pop(rec.id, asyncio.Event()).set()

    async def wait_started(self, rec: SandboxRecord, timeout: float) -> None:
        ev = self._ready.get(rec.id)
        if ev is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ev.wait(), timeout)

    def _set_deadline(self, rec: SandboxRecord) -> None:
        rec.deadline_ms = now_ms() + rec.timeout_secs * 1000 if rec.timeout_secs else None

    # ---- update ------------------------------------------------------------------------------

    async def update(self, rec: SandboxRecord, changes: dict[str, Any]) -> SandboxRecord:
        if not rec.live:
            raise InvalidState(f"Sandbox {rec.id} is terminated")
        if "resources" in changes:
            return await self._resize(rec, changes["resources"] or {})
        if "name" in changes:
            name = changes["name"]
            if name is None:
                raise BadRequest("name cannot be null")
            self._check_name(rec.namespace, name, exclude=rec.id)
        if changes.get("auto_resume") is False and not (changes.get("name") or rec.name):
            raise BadRequest("auto_resume=false requires a named sandbox")
        for key in ("name", "auto_resume", "exposed_ports", "allow_unauthenticated_access"):
            if key in changes and changes[key] is not None:
                setattr(rec, key, changes[key])
        if "network" in changes:
            # Docker cannot change a running container's network mode, so only the policy on record
            # changes; it takes effect for snapshots and restores made from now on.
            rec.network_policy = changes["network"]
        await self.store.save_sandbox(rec)
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
        async with self._lock(rec.id):
            if rec.status != "running" or not rec.container_id:
                raise InvalidState(f"Sandbox {rec.id} can be resized only while running (it is {rec.status})")
            try:
                await self.backend.update_resources(rec.container_id, cpus, memory_mb)
            except EmulatorError as exc:
                rec.resource_resize = ResourceResize(generation=gen, requested=requested, status="failed",
                                                     error_message=exc.message)
            else:
                rec.cpus, rec.memory_mb = cpus, memory_mb
                rec.resource_resize = ResourceResize(generation=gen, requested=requested, status="succeeded")
            await self.store.save_sandbox(rec)
        return rec

    # ---- terminate ---------------------------------------------------------------------------

    async def terminate(self, rec: SandboxRecord) -> None:
        if not rec.live:
            return
        if rec.status == "pending":
            await self._terminate(rec, "cancelled", "Success(UserTerminated)")
            return
        async with self._lock(rec.id):
            await self._terminate(rec, "user_terminated", "Success(UserTerminated)")

    async def _terminate(self, rec: SandboxRecord, reason: str, outcome: str,
                         error_details: str | None = None) -> None:
        if not rec.live:
            return
        rec.status, rec.pending_reason = "terminated", None
        rec.termination_reason, rec.outcome, rec.error_details = reason, outcome, error_details
        rec.terminated_at, rec.deadline_ms = now_ms(), None
        await self.store.save_sandbox(rec)
        await self.agents.close(rec.id)
        if rec.container_id:
            await self.backend.remove(rec.container_id)
        if rec.suspend_checkpoint:
            await self.checkpoints.discard_suspend(rec)
        self._remove_run_dir(rec.id)

    async def _mark_terminated(self, rec: SandboxRecord, reason: str, details: str) -> None:
        rec.status, rec.pending_reason, rec.termination_reason = "terminated", None, reason
        rec.outcome, rec.error_details, rec.terminated_at = f"Failure({reason})", details, now_ms()
        await self.store.save_sandbox(rec)
        self._remove_run_dir(rec.id)

    # ---- suspend / resume --------------------------------------------------------------------

    async def suspend(self, rec: SandboxRecord) -> asyncio.Task[None] | None:
        if not rec.name:
            raise EphemeralSandbox(f"Sandbox {rec.id} is ephemeral (created without a name); only named "
                                   "sandboxes can be suspended")
        if rec.status == "suspended":
            return None
        if rec.status != "running":
            raise InvalidState(f"Sandbox {rec.id} cannot be suspended while {rec.status}")
        self.checkpoints.require_memory("suspend")
        self._transition_errors.pop(rec.id, None)
        rec.status = "suspending"
        await self.store.save_sandbox(rec)
        return self._spawn(self._do_suspend(rec), f"suspend-{rec.id}")

    async def _do_suspend(self, rec: SandboxRecord) -> None:
        async with self._lock(rec.id):
            if rec.status != "suspending":
                return  # terminated meanwhile
            try:
                # CRIU cannot dump a unix socket connected to the host: drop the proxy's pool first
                # (an open follow stream is cut here; following again after resume replays it all).
                await self.agents.close(rec.id)
                await self.checkpoints.suspend(rec)
                rec.status, rec.deadline_ms = "suspended", None
            except EmulatorError as exc:
                log.warning("suspend of %s failed: %s", rec.id, exc.message)
                self._transition_errors[rec.id] = f"suspend of {rec.id} failed, it keeps running: {exc.message}"
                rec.status = "running"
            await self.store.save_sandbox(rec)

    async def resume(self, rec: SandboxRecord) -> asyncio.Task[None] | None:
        if not rec.name:
            raise EphemeralSandbox(f"Sandbox {rec.id} is ephemeral; only named sandboxes can be resumed")
        if rec.status == "running":
            return None
        if rec.status == "pending" and rec.suspend_checkpoint:
            return self._resume_tasks_get(rec)
        if rec.status != "suspended":
            raise InvalidState(f"Sandbox {rec.id} cannot be resumed while {rec.status}")
        self._transition_errors.pop(rec.id, None)
        rec.status, rec.pending_reason = "pending", "waiting_for_container"
        await self.store.save_sandbox(rec)
        return self._spawn(self._do_resume(rec), f"resume-{rec.id}")

    def transition_error(self, sandbox_id: str) -> str | None:
        """Why the last suspend or resume of this sandbox failed (once)."""
        return self._transition_errors.pop(sandbox_id, None)

    def _resume_tasks_get(self, rec: SandboxRecord) -> asyncio.Task[None] | None:
        return self._task_named(f"resume-{rec.id}")

    async def _do_resume(self, rec: SandboxRecord) -> None:
        async with self._lock(rec.id):
            if rec.status != "pending":
                return  # terminated meanwhile
            try:
                # The agent's listening socket is re-created by the restore; a stale file is in the way.
                self._clear_stale_socket(rec.id)
                await self.checkpoints.resume(rec)
                ok = await self.agents.wait_healthy(self.endpoint(rec), 15)
                if not ok:
                    raise EmulatorError("the agent did not answer after the restore")
                rec.status, rec.pending_reason = "running", None
                self._set_deadline(rec)
            except EmulatorError as exc:
                log.warning("resume of %s failed: %s", rec.id, exc.message)
                self._transition_errors[rec.id] = f"resume of {rec.id} failed, it stays suspended: {exc.message}"
                rec.status, rec.pending_reason = "suspended", None
            await self.store.save_sandbox(rec)

    # ---- snapshots ---------------------------------------------------------------------------

    async def snapshot(self, rec: SandboxRecord, snapshot_type: str | None) -> Any:
        if rec.status != "running":
            raise InvalidState(f"Sandbox {rec.id} can be snapshotted only while running (it is {rec.status})")
        kind = snapshot_type or ("memory" if self.checkpoints.memory_available else "filesystem")
        if kind == "memory":
            self.checkpoints.require_memory("memory checkpoint")
        snap = await self.checkpoints.new_snapshot(rec, kind)
        rec.status = "snapshotting"
        await self.store.save_sandbox(rec)

        async def run() -> None:
            async with self._lock(rec.id):
                try:
                    if kind == "memory":
                        await self.agents.close(rec.id)
                    await self.checkpoints.take_snapshot(rec, snap)
                finally:
                    if rec.status == "snapshotting":
                        rec.status = "running"
                        await self.store.save_sandbox(rec)

        self._spawn(run(), f"snapshot-{rec.id}")
        return snap

    def _task_named(self, name: str) -> asyncio.Task[Any] | None:
        for t in self._tasks:
            if t.get_name() == name and not t.done():
                return t
        return None

    async def copy(self, rec: SandboxRecord, times: int, timeout: float) -> list[SandboxRecord]:
        """`copy(times=N)`: a snapshot of the sandbox (memory where CRIU works), restored N times."""
        if times < 1 or times > 32:
            raise BadRequest(f"times must be between 1 and 32; got {times}")
        snap = await self.snapshot(rec, None)
        task = self._task_named(f"snapshot-{rec.id}")
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)
        if snap.status not in ("local_ready", "completed"):
            raise EmulatorError(f"copy of {rec.id} failed: snapshot {snap.id} is {snap.status}"
                                + (f": {snap.error}" if snap.error else ""))
        copies = []
        for _ in range(times):
            copies.append(await self.create(
                rec.namespace, image=None, cpus=None, memory_mb=None, disk_mb=None, timeout_secs=None,
                entrypoint=None, network=None, name=None, auto_resume=None, exposed_ports=None,
                allow_unauthenticated_access=None, max_pending_secs=None, snapshot_id=snap.id,
                session_label=rec.session_label))
        await asyncio.gather(*(self.wait_started(c, timeout) for c in copies))
        # The copies own their dumps and image layers now; the intermediate snapshot is not kept.
        if all(c.status != "pending" for c in copies):
            await self.checkpoints.delete_snapshot(snap)
        return copies

    # ---- proxy support -----------------------------------------------------------------------

    def resolve_route(self, ident: str) -> SandboxRecord:
        rec = self._sandboxes.get(ident)
        if rec is None:
            live = [r for r in self._sandboxes.values() if r.name == ident and r.live]
            rec = live[0] if live else None
        if rec is None:
            raise SandboxNotFound("Sandbox not found")
        return rec

    async def ready_for_traffic(self, ident: str) -> tuple[SandboxRecord, AgentEndpoint]:
        """The sandbox a data-plane request goes to, waking it first when auto_resume allows."""
        rec = self.resolve_route(ident)
        if rec.status == "snapshotting":
            # A new connection into the agent would break the dump: hold the request until it ends.
            task = self._task_named(f"snapshot-{rec.id}")
            if task is not None:
                await asyncio.wait({task}, timeout=2.5)
            if rec.status == "snapshotting":
                raise SandboxNotReady(f"Sandbox {rec.id} is being checkpointed")
        if rec.status == "running":
            return rec, self.endpoint(rec)
        resuming = rec.status == "pending" and rec.suspend_checkpoint is not None
        if (rec.status == "suspended" and rec.auto_resume) or resuming:
            task = await self.resume(rec)
            if task is not None:
                await asyncio.wait({task}, timeout=2.5)
            if rec.status == "running":
                return rec, self.endpoint(rec)
            raise SandboxNotReady(f"Sandbox {rec.id} is resuming")
        if rec.status == "pending" or (rec.status == "suspending" and rec.auto_resume):
            raise SandboxNotReady(f"Sandbox {rec.id} is not ready yet (state: {rec.status})")
        if rec.status == "terminated":
            # 404, not 503: the SDK would retry a 503 for seconds, and a terminated sandbox never returns.
            raise SandboxNotFound(f"Sandbox {rec.id} is terminated ({rec.termination_reason})")
        raise SandboxNotRunning(f"Sandbox not running (state: {rec.status})")

    # ---- timeouts ----------------------------------------------------------------------------

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.reap_once(time.time() * 1000)
            except Exception:  # the reaper must outlive any one bad record
                log.exception("timeout reaper pass failed")

    async def reap_once(self, now: float) -> None:
        for rec in list(self._sandboxes.values()):
            if (rec.status == "pending" and rec.max_pending_secs is not None and rec.id in self._ready
                    and now - rec.created_at > rec.max_pending_secs * 1000):
                await self._terminate(rec, "no_capacity", "Failure(NoCapacity)",
                                      error_details=f"not running within max_pending_secs={rec.max_pending_secs}")
            if rec.status != "running" or rec.deadline_ms is None or rec.deadline_ms > now:
                continue
            if rec.name and self.checkpoints.memory_available:
                log.info("sandbox %s reached its timeout: suspending (named)", rec.id)
                rec.deadline_ms = None
                self._spawn(self._suspend_on_timeout(rec), f"timeout-suspend-{rec.id}")
            else:
                log.info("sandbox %s reached its timeout: terminating", rec.id)
                await self._terminate(rec, "timeout", "Success(Timeout)")

    async def _suspend_on_timeout(self, rec: SandboxRecord) -> None:
        """A named sandbox's lifetime ends in suspension; if the dump fails it must still end."""
        try:
            task = await self.suspend(rec)
            if task is not None:
                await task
        except EmulatorError as exc:
            self._transition_errors[rec.id] = exc.message
        if rec.status == "running":
            detail = self._transition_errors.get(rec.id, "suspend failed")
            await self._terminate(rec, "timeout", "Success(Timeout)",
                                  error_details=f"could not suspend at the timeout, terminated instead: {detail}")

"""Suspend, resume and snapshots of one sandbox (docs/protocol.md §6.5-§6.6, the SDK's `suspend`,
`resume`, `checkpoint`): the state moves here, the dumps in the checkpoint engine."""

from __future__ import annotations

import logging

from emulator import metrics
from emulator.errors import EmulatorError, EphemeralSandbox, InvalidState
from emulator.manager import egress, faults
from emulator.manager.context import ManagerContext
from emulator.model.records import SandboxRecord, SnapshotRecord
from emulator.model.states import SandboxStatus

log = logging.getLogger(__name__)
S = SandboxStatus


async def start_suspend(ctx: ManagerContext, rec: SandboxRecord) -> bool:
    """running -> suspending, the dump in the background. False when already suspended.

    Raises EphemeralSandbox (no name), InvalidState (not running), NotSupported (no CRIU).
    """
    if not rec.name and not rec.pool_id:
        # Pool sandboxes suspend at their timeout (PROTOCOL.md §11), so they suspend and resume too.
        raise EphemeralSandbox(f"Sandbox {rec.id} is ephemeral (created without a name); only named "
                               "sandboxes can be suspended")
    if rec.status == S.suspended:
        return False
    if rec.status != S.running:
        raise InvalidState(f"Sandbox {rec.id} cannot be suspended while {rec.status}")
    ctx.checkpoints.require_memory("suspend", rec.runtime, rec)
    ctx.transition_errors.pop(rec.id, None)
    await ctx.table.move(rec, S.suspending)
    ctx.tasks.spawn("suspend", rec.id, metrics.timed(
        "suspend", _do_suspend(ctx, rec), ok=lambda: rec.status == S.suspended,
        after=lambda: metrics.observe_dump("suspend", ctx.checkpoints.suspend_dump_dir(rec))))
    return True


async def _do_suspend(ctx: ManagerContext, rec: SandboxRecord) -> None:
    async with ctx.table.lock(rec.id):
        if rec.status != S.suspending:
            return  # terminated meanwhile
        try:
            # CRIU cannot dump a unix socket connected to the host: drop the proxy's pool first
            # (an open follow stream is cut here; following again after resume replays it all).
            await faults.before_transition(ctx, "suspend", rec)
            await ctx.agents.close(rec.id)
            await _unmount(ctx, rec)
            await ctx.checkpoints.suspend(rec)
        except EmulatorError as exc:
            await _remount(ctx, rec)
            log.warning("suspend of %s failed: %s", rec.id, exc.message)
            ctx.transition_errors[rec.id] = f"suspend of {rec.id} failed, it keeps running: {exc.message}"
            await ctx.table.move(rec, S.running)
            return
        await ctx.drop_host_rules(rec)  # its address is free now; the resume applies them for its new one
        await ctx.table.move(rec, S.suspended)


async def start_resume(ctx: ManagerContext, rec: SandboxRecord) -> bool:
    """suspended -> pending (resuming), the restore in the background. False when already running.

    Raises EphemeralSandbox (no name), InvalidState (neither suspended nor resuming).
    """
    if not rec.name and not rec.pool_id:
        raise EphemeralSandbox(f"Sandbox {rec.id} is ephemeral; only named sandboxes can be resumed")
    if rec.status == S.running:
        return False
    if rec.status == S.pending and rec.suspend_checkpoint:
        return True  # a resume is under way
    if rec.status != S.suspended:
        raise InvalidState(f"Sandbox {rec.id} cannot be resumed while {rec.status}")
    ctx.transition_errors.pop(rec.id, None)
    await ctx.table.move(rec, S.pending, pending_reason="waiting_for_container")
    ctx.tasks.spawn("resume", rec.id, metrics.timed("resume", _do_resume(ctx, rec), ok=lambda: rec.status == S.running))
    return True


async def _do_resume(ctx: ManagerContext, rec: SandboxRecord) -> None:
    async with ctx.table.lock(rec.id):
        if rec.status != S.pending:
            return  # terminated meanwhile
        try:
            # The agent's listening socket is re-created by the restore; a stale entry is in the way.
            await faults.before_transition(ctx, "resume", rec)
            ctx.run_dirs.clear_socket(rec.id)
            await ctx.checkpoints.resume(rec)
            await _remount(ctx, rec)  # the dump was taken without them (below)
            await egress.enforce(ctx, rec, fresh=True)  # the restore made a new, empty network namespace
            if not await ctx.agents.wait_healthy(ctx.run_dirs.endpoint(rec), 15):
                raise EmulatorError("the agent did not answer after the restore")
        except EmulatorError as exc:
            log.warning("resume of %s failed: %s", rec.id, exc.message)
            ctx.transition_errors[rec.id] = f"resume of {rec.id} failed, it stays suspended: {exc.message}"
            await ctx.table.move(rec, S.suspended)
            return
        ctx.set_deadline(rec)
        await ctx.table.move(rec, S.running)


async def start_snapshot(ctx: ManagerContext, rec: SandboxRecord, snapshot_type: str | None,
                         transient: bool = False) -> SnapshotRecord:
    """running -> snapshotting, the dump and commit in the background, back to running after.

    `snapshot_type` None picks memory where CRIU works, else filesystem; `transient` marks the
    snapshot of a `copy`, removed after its restores. Raises InvalidState, NotSupported.
    """
    if rec.status != S.running:
        raise InvalidState(f"Sandbox {rec.id} can be snapshotted only while running (it is {rec.status})")
    kind = snapshot_type or ("memory" if ctx.checkpoints.memory_available_for(rec.runtime, rec) else "filesystem")
    if kind == "memory":
        ctx.checkpoints.require_memory("memory checkpoint", rec.runtime, rec)
    snap = await ctx.checkpoints.new_snapshot(rec, kind, transient)
    await ctx.table.move(rec, S.snapshotting)
    ctx.tasks.spawn("snapshot", rec.id, metrics.timed(
        "checkpoint", _do_snapshot(ctx, rec, snap), ok=lambda: snap.status in ("local_ready", "completed"),
        after=lambda: metrics.observe_dump("checkpoint", snap.checkpoint_dir)))
    return snap


async def _do_snapshot(ctx: ManagerContext, rec: SandboxRecord, snap: SnapshotRecord) -> None:
    async with ctx.table.lock(rec.id):
        try:
            if await faults.checkpoint_failed(ctx, rec, snap):
                return
            if snap.snapshot_type == "memory":
                await ctx.agents.close(rec.id)
                await _unmount(ctx, rec)
            try:
                await ctx.checkpoints.take_snapshot(rec, snap)
            finally:
                if snap.snapshot_type == "memory":
                    await _remount(ctx, rec)
        finally:
            if rec.status == S.snapshotting:
                await ctx.table.move(rec, S.running)


# CRIU cannot dump a mount it does not know (the file systems are injected, not in the container's
# config: "doesn't have a proper root mount"), so they come off for a memory dump and go back after it,
# and after a resume or a restore. Their data is never part of a dump or a snapshot image.
async def _unmount(ctx: ManagerContext, rec: SandboxRecord) -> None:
    if rec.file_systems and ctx.file_systems is not None:
        await ctx.file_systems.unmount_all(rec)


async def _remount(ctx: ManagerContext, rec: SandboxRecord) -> None:
    if rec.file_systems and ctx.file_systems is not None and rec.container_id:
        try:
            await ctx.file_systems.mount_all(rec, replace=True)
        except EmulatorError as exc:  # the sandbox runs on; the mount is missing and the log says why
            log.warning("sandbox %s: file systems not mounted again: %s", rec.id, exc.message)

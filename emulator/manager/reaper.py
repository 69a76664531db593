"""Deadlines (docs/protocol.md §6.1 `timeout_secs`, `max_pending_secs`): one pass at a given time.

A named sandbox reaching its timeout is suspended (the cloud keeps named sandboxes), and so is one
claimed from a pool (§11: the SDK's own test expects `suspended` with no outcome); any other, or
one that cannot be suspended, is terminated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from emulator.errors import EmulatorError
from emulator.manager.context import ManagerContext
from emulator.manager.suspension import start_suspend
from emulator.model.records import SandboxRecord
from emulator.model.states import SandboxStatus

log = logging.getLogger(__name__)
S = SandboxStatus


async def reap_once(ctx: ManagerContext, now: float) -> list[tuple[str, str]]:
    """Act on every deadline passed at `now` (epoch ms); what was done, as (sandbox id, action) with
    action `pending_timeout` (terminated, no capacity), `suspend` (started) or `terminate`.

    Passes never overlap (ctx.reap_lock): a clock advance's own pass reports everything it made due,
    even when the background pass wakes in the middle of it."""
    async with ctx.reap_lock:
        return await reap_held(ctx, now)


async def reap_held(ctx: ManagerContext, now: float) -> list[tuple[str, str]]:
    """`reap_once` for a caller that holds ctx.reap_lock already."""
    fired: list[tuple[str, str]] = []
    for rec in ctx.table:
        if (rec.status == S.pending and rec.max_pending_secs is not None
                and ctx.tasks.running("launch", rec.id) is not None
                and now - rec.created_at > rec.max_pending_secs * 1000):
            await ctx.terminate(rec, "no_capacity", "Failure(NoCapacity)",
                                error_details=f"not running within max_pending_secs={rec.max_pending_secs}")
            fired.append((rec.id, "pending_timeout"))
        if rec.status != S.running or rec.deadline_ms is None or rec.deadline_ms > now:
            continue
        if (rec.name or rec.pool_id) and ctx.checkpoints.memory_available_for(rec.runtime, rec):
            log.info("sandbox %s reached its timeout: suspending (named or claimed from a pool)", rec.id)
            rec.deadline_ms = None
            ctx.tasks.spawn("timeout-suspend", rec.id, _suspend_on_timeout(ctx, rec))
            fired.append((rec.id, "suspend"))
        else:
            log.info("sandbox %s reached its timeout: terminating", rec.id)
            await ctx.terminate(rec, "timeout", "Success(Timeout)")
            fired.append((rec.id, "terminate"))
    return fired


async def _suspend_on_timeout(ctx: ManagerContext, rec: SandboxRecord) -> None:
    """A named sandbox's lifetime ends in suspension; if the dump fails it must still end."""
    try:
        if await start_suspend(ctx, rec):
            await ctx.tasks.wait("suspend", rec.id, None)
    except EmulatorError as exc:
        ctx.transition_errors[rec.id] = exc.message
    if rec.status == S.running:
        detail = ctx.transition_errors.get(rec.id, "suspend failed")
        await ctx.terminate(rec, "timeout", "Success(Timeout)",
                            error_details=f"could not suspend at the timeout, terminated instead: {detail}")


async def reap_forever(ctx: ManagerContext, clock: Callable[[], float], period_s: float = 1.0) -> None:
    """Run `reap_once(clock())` every `period_s` seconds until cancelled; a bad pass is logged."""
    while True:
        await asyncio.sleep(period_s)
        try:
            await reap_once(ctx, clock())
        except Exception:  # the reaper must outlive any one bad record
            log.exception("timeout reaper pass failed")

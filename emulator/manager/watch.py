"""Noticing sandboxes that died on their own (killed from outside, out of memory, the agent crashed).

Two ways in: the engine's event stream (`exits()`, a cheap watch) and the proxy's first failed call
into an agent. Either way the sandbox is marked terminated with the reason, and the proxy answers the
SDK with the 404 it does not retry instead of 503s it would retry for ~30 s.
"""

from __future__ import annotations

import asyncio
import logging

from emulator.errors import BackendUnavailable, EmulatorError, SandboxNotFound
from emulator.manager import warm
from emulator.manager.context import ManagerContext
from emulator.model.records import SandboxRecord
from emulator.model.states import SandboxStatus

log = logging.getLogger(__name__)
RETRY_S = (1, 2, 5, 10, 30)  # back-off of the event watch after the stream fails


def oom_cause(rec: SandboxRecord) -> tuple[str, str]:
    """The termination reason and details of a sandbox the OOM killer ended (also an injected oom_kill)."""
    return "oom_killed", f"its container ran out of memory ({rec.memory_mb} MiB) and was killed"


async def check_dead(ctx: ManagerContext, rec: SandboxRecord) -> bool:
    """True (and the record terminated with the cause) when a running sandbox's container is gone
    or stopped. Sandboxes in a transition (dump, restore, resize: their lock is held) are left alone:
    their container stops on purpose."""
    if rec.status != SandboxStatus.running or not rec.container_id or ctx.table.lock(rec.id).locked():
        return False
    try:
        state = await ctx.backend.state(rec.container_id)
    except BackendUnavailable:
        return False
    if state is not None and state.running:
        return False
    if state is None:
        reason, detail = "container_lost", "its container was removed from outside the emulator"
    elif state.oom_killed:
        reason, detail = oom_cause(rec)
    else:
        reason, detail = "container_exited", f"its container exited (code {state.exit_code})"
    log.warning("sandbox %s died: %s", rec.id, detail)
    await ctx.terminate(rec, reason, f"Failure({reason})", error_details=detail)
    return True


async def agent_unreachable(ctx: ManagerContext, sandbox_id: str, cause: str) -> EmulatorError | None:
    """After a failed connection to an agent: the 404 to send when the sandbox turns out dead, else None."""
    rec = ctx.table.get(sandbox_id)
    if rec is not None and (await check_dead(ctx, rec) or not rec.live):
        return SandboxNotFound(f"Sandbox {rec.id} is terminated ({rec.termination_reason}: {rec.error_details})")
    return None


async def watch_exits(ctx: ManagerContext) -> None:
    """Follow the engine's container exits until cancelled; reconnect with back-off when the stream fails."""
    failures = 0
    while True:
        try:
            async for container_id in ctx.backend.exits():
                failures = 0
                rec = next((r for r in ctx.table if r.container_id == container_id and r.live), None)
                if rec is None:
                    await warm.container_exited(ctx, container_id)
                else:
                    # Let a transition that stopped it on purpose take the sandbox's lock first.
                    await asyncio.sleep(0.2)
                    await check_dead(ctx, rec)
        except EmulatorError as exc:
            log.info("container exit watch: %s", exc.message)
        await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
        failures += 1

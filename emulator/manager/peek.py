"""Read-only looks into a running sandbox's agent for the dashboard (/emulator/ui): never wakes it."""

from __future__ import annotations

from typing import Any

from emulator.errors import EmulatorError, SandboxNotReady, SandboxNotRunning
from emulator.manager.context import ManagerContext
from emulator.model.states import SandboxStatus

AGENT_TIMEOUT_S = 5.0


async def agent_json(ctx: ManagerContext, sandbox_id: str, path: str) -> Any:
    """GET `path` (/api/v1/...) from a running sandbox's agent, its JSON answer. Raises SandboxNotFound
    (unknown), SandboxNotRunning (any other state: a suspended one is not woken), SandboxNotReady (the
    agent did not answer), EmulatorError (the agent answered an error)."""
    rec = ctx.table.resolve_route(sandbox_id)
    if rec.status != SandboxStatus.running:
        raise SandboxNotRunning(f"Sandbox not running (state: {rec.status})")
    client = ctx.agents.get(rec.id, ctx.run_dirs.endpoint(rec))
    try:
        resp = await client.get(path, timeout=AGENT_TIMEOUT_S)
    except Exception as exc:  # the agent is gone or slow: say so rather than a 500 without a reason
        raise SandboxNotReady(f"Sandbox {rec.id} did not answer: {type(exc).__name__}") from None
    if resp.status_code >= 400:
        raise EmulatorError(f"the agent answered {resp.status_code}: {resp.text[:200]}")
    return resp.json()

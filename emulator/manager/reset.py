"""Reset (issue 17): end and delete everything of a namespace or of a test session in one call.

A reset is a list of steps run in order, each given the context, the scope and the report to fill
(ids under its key, problems under "errors"): live sandboxes are terminated concurrently (each after
the container work in progress on it, as a DELETE would be), then the scope's pools go (their warm
containers with them), then its snapshots (one at a time: each deletion prunes Docker's dangling
images, which Docker refuses to run twice at once), then the sandbox records are forgotten, so a
`list()` afterwards is empty, then the scope's file systems (a mounted one cannot be deleted, and the
sandboxes that mounted it are gone by then), then the faults made for the scope. Parts of the
emulator that own more (built images) add their own step with `SandboxManager.add_reset_step`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from emulator.manager import warm
from emulator.manager.context import ManagerContext
from emulator.model.records import SandboxRecord

Report = dict[str, list[str]]
ResetStep = Callable[[ManagerContext, "ResetScope", Report], Awaitable[None]]
REPORT_KEYS = ("sandboxes", "terminated", "snapshots", "pools", "file_systems", "images", "faults", "errors")


class _Scoped(Protocol):
    namespace: str
    session_label: str | None


@dataclass(frozen=True)
class ResetScope:
    """What a reset covers: a namespace and/or a session label (None: any)."""

    namespace: str | None
    session: str | None

    def covers(self, item: _Scoped) -> bool:
        return ((self.namespace is None or item.namespace == self.namespace)
                and (self.session is None or item.session_label == self.session))


def terminate_step(terminate: Callable[[SandboxRecord], Awaitable[None]]) -> ResetStep:
    """Terminate the live sandboxes in scope, concurrently, with `terminate` (the manager's DELETE)."""

    async def step(ctx: ManagerContext, scope: ResetScope, report: Report) -> None:
        live = [r for r in ctx.table if r.live and scope.covers(r)]
        outcomes = await asyncio.gather(*(terminate(r) for r in live), return_exceptions=True)
        for rec, outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                report["errors"].append(f"sandbox {rec.id}: {outcome}")
        report["terminated"].extend(r.id for r in live)

    return step


async def pools_step(ctx: ManagerContext, scope: ResetScope, report: Report) -> None:
    """Delete the scope's pools and their warm containers (the emulator's own warm reserve stays).
    A pool with a live claimed sandbox outside the scope is kept and named in the errors."""
    for pool in [p for p in ctx.pools if not p.reserve and scope.covers(p)]:
        active = [r.id for r in warm.claimed(ctx, pool) if r.live]
        if active:
            report["errors"].append(f"pool {pool.id}: claimed sandboxes outside the reset are live: "
                                    f"{', '.join(active[:10])}")
            continue
        try:
            await ctx.pools.remove(pool)
            await warm.discard_all(ctx, pool)
            report["pools"].append(pool.id)
        except Exception as exc:  # a reset goes on past one stuck pool and says which
            report["errors"].append(f"pool {pool.id}: {exc}")


async def snapshots_step(ctx: ManagerContext, scope: ResetScope, report: Report) -> None:
    for snap in [s for s in ctx.checkpoints.list_all() if scope.covers(s)]:
        try:
            await ctx.checkpoints.delete_snapshot(snap)
            report["snapshots"].append(snap.id)
        except Exception as exc:  # a reset goes on past one stuck snapshot and says which
            report["errors"].append(f"snapshot {snap.id}: {exc}")


async def forget_step(ctx: ManagerContext, scope: ResetScope, report: Report) -> None:
    """Forget the ended sandbox records in scope (one still live, its terminate failed, is kept)."""
    for rec in [r for r in ctx.table if scope.covers(r)]:
        if not rec.live:
            await ctx.table.forget(rec)
            ctx.transition_errors.pop(rec.id, None)
            report["sandboxes"].append(rec.id)


async def file_systems_step(ctx: ManagerContext, scope: ResetScope, report: Report) -> None:
    """Delete the scope's file systems (manager/file_systems.py), data included."""
    if ctx.file_systems is not None:
        deleted, errors = await ctx.file_systems.delete_scope(scope.namespace, scope.session)
        report["file_systems"].extend(deleted)
        report["errors"].extend(errors)


async def faults_step(ctx: ManagerContext, scope: ResetScope, report: Report) -> None:
    """Delete the faults made for exactly this scope (a reset of everything: every fault)."""
    report["faults"].extend(ctx.faults.remove_scope(scope.namespace, scope.session))


def default_steps(terminate: Callable[[SandboxRecord], Awaitable[None]]) -> list[ResetStep]:
    return [terminate_step(terminate), pools_step, snapshots_step, forget_step, file_systems_step, faults_step]


async def reset(ctx: ManagerContext, steps: list[ResetStep], namespace: str | None,
                session: str | None) -> dict[str, Any]:
    """Run the reset steps for `namespace` and/or `session` (None: any).

    Returns {"sandboxes": [ids deleted], "terminated": [ids that were live], "snapshots", "pools",
    "file_systems", "images", "faults": [ids], "errors": [messages], "seconds": float} (and any key a
    registered step adds). What could not be removed is named in `errors` and kept; the rest still go.
    """
    t0 = time.monotonic()
    scope = ResetScope(namespace, session)
    report: Report = {key: [] for key in REPORT_KEYS}
    for step in steps:
        await step(ctx, scope, report)
    return {**report, "seconds": round(time.monotonic() - t0, 3)}

"""Reset (issue 17): end and delete everything of a namespace or of a test session in one call.

Live sandboxes are terminated concurrently (each after the container work in progress on it, as a
DELETE would be), then the scope's snapshots are deleted (one at a time: each deletion prunes
Docker's dangling images, which Docker refuses to run twice at once), then the sandbox records are
forgotten, so a `list()` afterwards is empty. File systems of the scope go last
(a mounted one cannot be deleted, and the sandboxes that mounted it are gone by then).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from emulator.manager.context import ManagerContext
from emulator.model.records import SandboxRecord, SnapshotRecord


def _in_scope(item: SandboxRecord | SnapshotRecord, namespace: str | None, session: str | None) -> bool:
    return ((namespace is None or item.namespace == namespace)
            and (session is None or item.session_label == session))


async def reset(ctx: ManagerContext, terminate: Callable[[SandboxRecord], Awaitable[None]],
                namespace: str | None, session: str | None) -> dict[str, Any]:
    """Terminate and delete the sandboxes and snapshots of `namespace` and/or `session` (None: any).

    Returns {"sandboxes": [ids deleted], "terminated": [ids that were live], "snapshots": [ids],
    "pools": [], "file_systems": [], "errors": [messages], "seconds": float}. A sandbox or snapshot
    that could not be removed is named in `errors` and kept; the rest still go.
    """
    t0 = time.monotonic()
    sandboxes = [r for r in ctx.table if _in_scope(r, namespace, session)]
    live = [r for r in sandboxes if r.live]
    errors: list[str] = []
    outcomes = await asyncio.gather(*(terminate(r) for r in live), return_exceptions=True)
    for rec, outcome in zip(live, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            errors.append(f"sandbox {rec.id}: {outcome}")
    snapshots: list[str] = []
    for snap in [s for s in ctx.checkpoints.list_all() if _in_scope(s, namespace, session)]:
        try:
            await ctx.checkpoints.delete_snapshot(snap)
            snapshots.append(snap.id)
        except Exception as exc:  # a reset goes on past one stuck snapshot and says which
            errors.append(f"snapshot {snap.id}: {exc}")
    deleted: list[str] = []
    for rec in sandboxes:
        if not rec.live:
            await ctx.table.forget(rec)
            ctx.transition_errors.pop(rec.id, None)
            deleted.append(rec.id)
    file_systems: list[str] = []
    if ctx.file_systems is not None:  # after the sandboxes: a mounted file system is not deleted
        file_systems, fs_errors = await ctx.file_systems.delete_scope(namespace, session)
        errors.extend(fs_errors)
    return {"sandboxes": deleted, "terminated": [r.id for r in live], "snapshots": snapshots,
            "pools": [], "file_systems": file_systems, "errors": errors, "seconds": round(time.monotonic() - t0, 3)}

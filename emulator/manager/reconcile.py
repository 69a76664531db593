"""Start-up reconciliation: every live record is brought to a state that is true of its container.

Design: docs/protocol.md §11 and docs/protocol.md §11. A transition cut off by a stop or a crash
ends where the container says it is; containers with our label and no live record are removed;
run folders of sandboxes that are gone are removed. Pools' warm containers are adopted or
replaced first (manager/warm.py).
"""

from __future__ import annotations

import logging

from emulator.manager.context import ManagerContext
from emulator.manager.warm import QUEUED, reconcile_pools
from emulator.model.records import SandboxRecord
from emulator.model.states import SandboxStatus

log = logging.getLogger(__name__)
S = SandboxStatus


async def reconcile(ctx: ManagerContext) -> None:
    """Records against containers, once, before the API serves."""
    containers = {c.sandbox_id: c for c in await ctx.backend.list_ours()}
    await reconcile_pools(ctx, containers)
    for rec in ctx.table:
        if not rec.live or (rec.status == S.pending and rec.pending_reason == QUEUED and not rec.container_id):
            continue  # a pool claim still waiting for room has no container yet
        c = containers.pop(rec.id, None)
        if c is not None and rec.container_id != c.container_id:
            # A create or restore cut off before it recorded its container: the label says whose it is.
            rec.container_id = c.container_id
        if rec.status in (S.suspended, S.suspending) or rec.suspend_checkpoint:
            # Suspended, or a suspend/resume cut off by the stop: a stopped container with its
            # dump is suspended (and resumes later); a running one is running.
            if c is None:
                await ctx.mark_lost(rec, "container_lost", "the suspended sandbox's container is gone")
                continue
            if not c.running and ctx.checkpoints.has_suspend_dump(rec):
                await _settle_suspended(ctx, rec)
                continue
            await ctx.checkpoints.forget_suspend(rec)
        if c is None:
            await ctx.mark_lost(rec, "container_lost", "its container disappeared while the emulator was stopped")
        elif not c.running:
            await ctx.backend.remove(c.container_id)
            await ctx.mark_lost(rec, "container_exited", "its container stopped while the emulator was stopped")
        elif rec.status != S.running:
            # A transition was cut off by the restart; the container runs, so the sandbox does, and a
            # create cut off before its deadline was written gets one now.
            if rec.deadline_ms is None:
                ctx.set_deadline(rec)
            await ctx.table.move(rec, S.running)
    for orphan in containers.values():
        log.info("removing orphan container %s (sandbox %s)", orphan.container_id[:12], orphan.sandbox_id)
        await ctx.backend.remove(orphan.container_id)
    ctx.run_dirs.sweep({r.id for r in ctx.table if r.live} | ctx.pools.warm_sandbox_ids())
    await ctx.checkpoints.sweep_dumps({r.container_id for r in ctx.table if r.live and r.container_id})


async def _settle_suspended(ctx: ManagerContext, rec: SandboxRecord) -> None:
    if rec.status != S.suspended:
        log.info("sandbox %s: interrupted transition, its dump is complete: suspended", rec.id)
    ctx.checkpoints.mark_suspended(rec)
    if rec.status == S.suspended:
        rec.deadline_ms = None
        await ctx.table.save(rec)
    else:
        await ctx.table.move(rec, S.suspended)

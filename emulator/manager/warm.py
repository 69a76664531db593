"""Warm containers of pools (PROTOCOL.md §6.8): started in the background, refilled, removed, reconciled.

A warm container runs the sandbox agent under a fresh sandbox id and has no sandbox record until a
claim (manager/pools.py) takes it. `keep_once` is the pool reconciler: it starts queued claims when
room frees and keeps each pool at `warm_containers` idle containers, never beyond `max_containers`
(idle plus claimed, PROTOCOL.md §6.8, the SDK's `create_pool` docs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from emulator.backend.base import ContainerState
from emulator.errors import EmulatorError
from emulator.manager.context import ManagerContext
from emulator.manager.launch import container_spec, launch
from emulator.model.ids import new_sandbox_id
from emulator.model.pools import PoolRecord, WarmContainer
from emulator.model.records import SandboxRecord, now_ms
from emulator.model.states import SandboxStatus

log = logging.getLogger(__name__)
S = SandboxStatus
QUEUED = "pool_at_capacity"  # pending_reason of a claim waiting for room in its pool (PROTOCOL.md §11)
RETRY_MS = 5000  # after a warm start failed, the pool waits this long before trying again, doubled
MAX_RETRY_MS = 300_000  # per failure in a row up to this
_HOLDING = (S.running, S.snapshotting, S.suspending)
# PoolManager._take_warm(pool, ready_only): takes an idle container out of a pool
TakeWarm = Callable[[PoolRecord, bool], Awaitable[WarmContainer | None]]


def claimed(ctx: ManagerContext, pool: PoolRecord) -> list[SandboxRecord]:
    """The live sandboxes claimed from `pool` (queued claims and suspended ones included), oldest first."""
    return sorted((r for r in ctx.table if r.pool_id == pool.id and r.live), key=lambda r: r.created_at)


def holds_container(rec: SandboxRecord) -> bool:
    """A claimed sandbox that counts against max_containers: it has, or is getting, a container."""
    return rec.status in _HOLDING or (rec.status == S.pending and rec.pending_reason != QUEUED)


def has_room(ctx: ManagerContext, pool: PoolRecord) -> bool:
    if pool.max_containers is None:
        return True
    used = len(pool.warm) + sum(1 for r in claimed(ctx, pool) if holds_container(r))
    return used < pool.max_containers


def sandbox_for(pool: PoolRecord, sandbox_id: str) -> SandboxRecord:
    """A record with the pool's options under `sandbox_id`: what a warm container is started as and
    what a claim of it becomes."""
    return SandboxRecord(id=sandbox_id, namespace=pool.namespace, image=pool.image, **pool.options(),
                         session_label=pool.session_label, pool_id=None if pool.reserve else pool.id)


async def _drop(ctx: ManagerContext, entry: WarmContainer) -> None:
    if entry.container_id:
        await ctx.backend.remove(entry.container_id)
        entry.container_id = None
    await ctx.agents.close(entry.sandbox_id)
    ctx.run_dirs.remove(entry.sandbox_id)


async def discard(ctx: ManagerContext, pool: PoolRecord, entry: WarmContainer) -> None:
    """Remove an unclaimed container (from the pool and the engine). One still starting is removed by
    its start task when that sees the mark."""
    entry.discarded = True
    if entry in pool.warm:
        pool.warm.remove(entry)
        await ctx.pools.save(pool)
    if ctx.tasks.running("warm", entry.sandbox_id) is None:
        await _drop(ctx, entry)


async def discard_all(ctx: ManagerContext, pool: PoolRecord, wait_s: float = 30.0) -> None:
    """Remove every idle container of `pool`, waiting up to `wait_s` for those still starting to be gone."""
    entries = list(pool.warm)
    for entry in entries:
        await discard(ctx, pool, entry)
    await asyncio.gather(*(ctx.tasks.wait("warm", e.sandbox_id, wait_s) for e in entries))


async def start_warm(ctx: ManagerContext, pool: PoolRecord, entry: WarmContainer) -> None:
    """Create and start one warm container until its agent answers; on failure remove it and hold off
    the pool's next try for RETRY_MS. A claim may take the entry meanwhile (it waits for this task)."""
    rec = sandbox_for(pool, entry.sandbox_id)
    try:
        spec = container_spec(ctx, rec, pool.image)
        entry.container_id = await ctx.backend.create(spec)
        entry.docker_runtime = spec.runtime
        await ctx.pools.save(pool)
        if not entry.discarded:
            await ctx.backend.start(entry.container_id)
            rec.container_id = entry.container_id
            if not await ctx.agents.wait_healthy(ctx.run_dirs.endpoint(rec), ctx.settings.startup_timeout):
                raise EmulatorError(f"the agent of a warm container of pool {pool.id} did not answer within "
                                    f"{ctx.settings.startup_timeout}s")
            entry.ready = True
            pool.start_failures = 0
            await ctx.pools.save(pool)
    except asyncio.CancelledError:
        raise  # the emulator stops: the next start-up reconciles what is left
    except Exception as exc:  # a failed warm start must never take the pool down
        log.warning("warm container %s of pool %s failed to start: %s", entry.sandbox_id, pool.id, exc)
        pool.retry_after_ms = now_ms() + min(MAX_RETRY_MS, RETRY_MS * 2 ** min(pool.start_failures, 16))
        pool.start_failures += 1
        await _drop(ctx, entry)
        if entry in pool.warm:
            pool.warm.remove(entry)
            await ctx.pools.save(pool)
        return
    if entry.discarded:
        await _drop(ctx, entry)


async def adopt_warm(ctx: ManagerContext, rec: SandboxRecord, entry: WarmContainer) -> None:
    """The launch of a claim that took a warm container still starting: pending -> running once it
    is up; the cold way (launch) when its start failed; its container removed if the claim ended."""
    task = ctx.tasks.running("warm", entry.sandbox_id)
    if task is not None:
        await asyncio.wait({task})
    if not entry.ready or entry.container_id is None:
        rec.container_id = None
        await launch(ctx, rec, None)
        return
    async with ctx.table.lock(rec.id):
        if rec.status != S.pending:
            await _drop(ctx, entry)  # the claim was cancelled while its container started
            return
        rec.container_id, rec.docker_runtime = entry.container_id, entry.docker_runtime
        ctx.set_deadline(rec)
        await ctx.table.move(rec, S.running)


async def keep_once(ctx: ManagerContext) -> None:
    """One pass of the pool reconciler over every pool: queued claims first, then the warm target."""
    for pool in ctx.pools:
        for rec in claimed(ctx, pool):
            if rec.status == S.pending and rec.pending_reason == QUEUED and has_room(ctx, pool):
                log.info("pool %s has room: starting queued claim %s", pool.id, rec.id)
                rec.pending_reason = "scheduling"
                await ctx.table.save(rec)
                ctx.tasks.spawn("launch", rec.id, launch(ctx, rec, None))
        if any(r.pending_reason == QUEUED for r in claimed(ctx, pool)):
            continue  # a waiting claim gets the next free place, not a new spare
        while len(pool.warm) > pool.warm_containers:
            # Lowered target: the newest spares go first (the oldest are the most likely ready).
            await discard(ctx, pool, pool.warm[-1])
        while (len(pool.warm) < pool.warm_containers and has_room(ctx, pool)
               and now_ms() >= pool.retry_after_ms and ctx.pools.get(pool.id) is pool):
            entry = WarmContainer(sandbox_id=new_sandbox_id())
            pool.warm.append(entry)
            await ctx.pools.save(pool)
            ctx.tasks.spawn("warm", entry.sandbox_id, start_warm(ctx, pool, entry))


async def keep_forever(ctx: ManagerContext, wake: asyncio.Event, period_s: float = 1.0) -> None:
    """Run `keep_once` when woken (a claim, a pool change) or every `period_s` s, until cancelled."""
    while True:
        try:
            await asyncio.wait_for(wake.wait(), timeout=period_s)
        except asyncio.TimeoutError:
            pass
        wake.clear()
        try:
            await keep_once(ctx)
        except Exception:  # the reconciler must outlive any one bad pool
            log.exception("pool reconciler pass failed")


async def container_exited(ctx: ManagerContext, container_id: str) -> bool:
    """The exit watch saw `container_id` die: True (and the entry dropped) when it was a warm one."""
    for pool in ctx.pools:
        for entry in pool.warm:
            if entry.container_id == container_id and ctx.tasks.running("warm", entry.sandbox_id) is None:
                log.warning("warm container %s of pool %s exited: replacing it", entry.sandbox_id, pool.id)
                await discard(ctx, pool, entry)
                return True
    return False


async def reconcile_pools(ctx: ManagerContext, containers: dict[str, ContainerState]) -> None:
    """At start-up, before the sandboxes: adopt each warm container that still runs and was ready,
    drop the rest (an entry a claim already took, a start cut off, a container gone). Adopted
    containers are popped from `containers`, so the orphan sweep leaves them alone."""
    for pool in ctx.pools:
        for entry in list(pool.warm):
            c = containers.get(entry.sandbox_id)
            if ctx.table.get(entry.sandbox_id) is not None:
                pool.warm.remove(entry)  # claimed just before the stop: the record owns the container
                continue
            containers.pop(entry.sandbox_id, None)
            if c is not None and c.running and entry.ready:
                entry.container_id = c.container_id
                continue
            log.info("pool %s: dropping warm container %s (%s)", pool.id, entry.sandbox_id,
                     "not running" if c is None or not c.running else "its start was cut off")
            pool.warm.remove(entry)
            entry.container_id = c.container_id if c is not None else entry.container_id
            await _drop(ctx, entry)
        await ctx.pools.save(pool)

"""PoolManager: sandbox pools as the SDK calls them (PROTOCOL.md §6.8, §13; `create_pool`, `get_pool`,
`list_pools`, `update_pool`, `delete_pool`, `claim` / `Sandbox.create(pool_id=...)`).

A claimed sandbox is a normal sandbox record with the pool's image, resources, timeout, entrypoint
and network policy, and `pool_id` set. A claim takes an idle warm container when there is one (it
becomes the sandbox at once), else starts a container if the pool has room, else waits pending with
`pending_reason: pool_at_capacity` and starts when a claimed sandbox of the pool ends, as the SDK's
`SandboxPending` docs describe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emulator.errors import BadRequest, PoolInUse
from emulator.manager import image_checks, warm
from emulator.manager.context import ManagerContext
from emulator.manager.launch import launch
from emulator.model.ids import new_sandbox_id
from emulator.model.pools import PoolRecord, WarmContainer
from emulator.model.records import SandboxOptions, SandboxRecord, now_ms
from emulator.model.runtimes import image_runtime
from emulator.model.spec import SandboxSpec
from emulator.model.states import SandboxStatus

S = SandboxStatus
MAX_WARM = 32  # warm containers one pool may keep: each costs a running container on this machine


@dataclass
class PoolConfig:
    """A create or PUT of a pool: the sandbox options as a spec (model/spec.py), plus the pool's sizes."""

    spec: SandboxSpec
    max_containers: int | None = None
    warm_containers: int | None = None
    secret_names: list[str] | None = None
    keep_network: bool = False  # a PUT without `network` keeps the pool's policy


@dataclass
class PoolContainerView:
    """One container of a pool as `get_pool` lists it."""

    id: str
    state: str  # "Idle" | "Running"
    sandbox_id: str | None


class PoolManager:
    """Pools of one emulator. `check_resources(cpus, memory_mb)` raises BadRequest (the sandboxes' rule)."""

    def __init__(self, ctx: ManagerContext, check_resources: Callable[[float | None, int | None], None]) -> None:
        self._ctx = ctx
        self._check_resources = check_resources
        self.wake = asyncio.Event()

    def lookup(self, namespace: str, pool_id: str) -> PoolRecord:
        """PoolNotFound (404) unless the namespace has it."""
        return self._ctx.pools.lookup(namespace, pool_id)

    def list_pools(self, namespace: str) -> list[PoolRecord]:
        return self._ctx.pools.in_namespace(namespace)

    def containers(self, pool: PoolRecord) -> list[PoolContainerView]:
        """Idle warm containers, then the claimed sandboxes that hold a container (suspended and queued
        ones do not). A warm container is Idle once its agent answers (a claim then takes it at once);
        one still starting is not listed."""
        views = [PoolContainerView(w.id, "Idle", None) for w in pool.warm if w.ready]
        for rec in warm.claimed(self._ctx, pool):
            if warm.holds_container(rec):
                views.append(PoolContainerView(rec.pool_container_id or rec.id, "Running", rec.id))
        return views

    async def _resolve(self, config: PoolConfig, base: SandboxOptions, image: str | None) -> dict[str, Any]:
        spec = config.spec
        self._check_resources(spec.cpus, spec.memory_mb)
        warm_n = config.warm_containers or 0
        if warm_n > MAX_WARM:
            raise BadRequest(f"warm_containers must be at most {MAX_WARM} on this emulator; got {warm_n}")
        if config.max_containers is not None and warm_n > config.max_containers:
            raise BadRequest(f"warm_containers ({warm_n}) cannot exceed max_containers ({config.max_containers})")
        image = spec.image or image or self._ctx.settings.default_image
        docker_image, runtime = image_runtime(image, self._ctx.settings.runtime)  # a pool's runtime: its image suffix
        await image_checks.check_image(self._ctx, docker_image)  # ImageNotFound, ImageIncompatible
        return {**spec.resolve(base), "image": image, "runtime": runtime, "max_containers": config.max_containers,
                "warm_containers": warm_n, "secret_names": config.secret_names}

    async def create(self, namespace: str, config: PoolConfig) -> PoolRecord:
        """A new pool; its warm containers start in the background. Raises BadRequest, ImageNotFound."""
        fields = await self._resolve(config, SandboxOptions(disk_mb=self._ctx.settings.default_disk_mb), None)
        pool = PoolRecord(namespace=namespace, session_label=config.spec.session_label, **fields)
        await self._ctx.pools.add(pool)
        self.wake.set()
        return pool

    async def update(self, pool: PoolRecord, config: PoolConfig) -> PoolRecord:
        """PUT: the full configuration. A change of image, resources, entrypoint or network recycles the
        idle warm containers; claimed sandboxes keep what they started with (the SDK's docs)."""
        before = pool.template()
        fields = await self._resolve(config, SandboxOptions(disk_mb=self._ctx.settings.default_disk_mb), pool.image)
        if config.keep_network:
            fields["network_policy"] = pool.network_policy
        for key, value in fields.items():
            setattr(pool, key, value)
        pool.updated_at = now_ms()
        pool.retry_after_ms = pool.start_failures = 0
        await self._ctx.pools.save(pool)
        if pool.template() != before:
            await warm.discard_all(self._ctx, pool)
        self.wake.set()
        return pool

    async def delete(self, pool: PoolRecord) -> None:
        """Delete a pool and its warm containers. PoolInUse (409) while claimed sandboxes are active."""
        active = [r.id for r in warm.claimed(self._ctx, pool) if r.status != S.suspended]
        if active:
            raise PoolInUse(f"Sandbox pool '{pool.id}' has {len(active)} active sandbox(es): "
                            f"{', '.join(active[:10])}; terminate them first")
        await self._ctx.pools.remove(pool)
        await warm.discard_all(self._ctx, pool)

    async def claim(self, pool: PoolRecord, session_label: str | None) -> SandboxRecord:
        """A sandbox from the pool: running at once from an idle warm container, else pending (starting,
        or queued with `pool_at_capacity` when the pool is at max_containers)."""
        ctx = self._ctx
        entry = await self.take_warm(pool)
        sandbox_id = entry.sandbox_id if entry else new_sandbox_id()
        rec = warm.sandbox_for(pool, sandbox_id)
        # The container carries the pool's session label; a cold one gets the caller's.
        rec.session_label = pool.session_label if entry else (session_label or pool.session_label)
        rec.pool_container_id = entry.id if entry else None
        rec.container_id = entry.container_id if entry and entry.ready else None
        rec.docker_runtime = entry.docker_runtime if entry else None  # a cold one's launch sets it
        if entry is None and not warm.has_room(ctx, pool):
            rec.pending_reason = warm.QUEUED
        await ctx.table.add(rec)
        if entry is not None:
            await ctx.pools.save(pool)
        if entry is not None and entry.ready:
            ctx.set_deadline(rec)
            await ctx.table.move(rec, S.running)
        elif entry is not None:
            rec.pending_reason = "waiting_for_container"
            ctx.tasks.spawn("launch", rec.id, warm.adopt_warm(ctx, rec, entry))
        elif rec.pending_reason != warm.QUEUED:
            ctx.tasks.spawn("launch", rec.id, launch(ctx, rec, None))
        self.wake.set()  # refill the warm target
        return rec

    async def take_warm(self, pool: PoolRecord, ready_only: bool = False) -> WarmContainer | None:
        """Take an idle container out of the pool: a ready one whose agent answers, else (unless
        `ready_only`) one still starting. Taken before any await, so two claims never share one;
        a ready one that does not answer is removed (the reconciler replaces it)."""
        while True:
            entry = next((w for w in pool.warm if w.ready), None)
            if entry is None and not ready_only:
                entry = next(iter(pool.warm), None)
            if entry is None:
                return None
            pool.warm.remove(entry)
            if not entry.ready:
                return entry
            rec = warm.sandbox_for(pool, entry.sandbox_id)
            rec.container_id = entry.container_id
            if await self._ctx.agents.wait_healthy(self._ctx.run_dirs.endpoint(rec), 0.5):
                return entry
            await warm.discard(self._ctx, pool, entry)

    async def remove_all_warm(self, reserve_only: bool = False) -> None:
        """Remove the warm containers of every pool (emulator shutdown with TLE_TERMINATE_ON_EXIT), or of
        the emulator's own reserve only (any other shutdown: it is capacity, refilled in the background at
        the next start, not something a user made)."""
        for pool in self._ctx.pools:
            if pool.reserve or not reserve_only:
                await warm.discard_all(self._ctx, pool, wait_s=5.0)

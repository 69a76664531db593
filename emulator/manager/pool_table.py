"""The live table of pool records, persisted through the store on each change."""

from __future__ import annotations

from collections.abc import Iterator

from emulator.errors import PoolNotFound
from emulator.model.pools import PoolRecord, WarmContainer
from emulator.store.sqlite import Store


class PoolTable:
    """Every pool the emulator knows, by id."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pools: dict[str, PoolRecord] = {}

    def load(self, pools: list[PoolRecord]) -> None:
        self._pools.update({p.id: p for p in pools})

    def __iter__(self) -> Iterator[PoolRecord]:
        return iter(list(self._pools.values()))

    def get(self, pool_id: str) -> PoolRecord | None:
        return self._pools.get(pool_id)

    def lookup(self, namespace: str, pool_id: str) -> PoolRecord:
        """The pool `pool_id` of `namespace`; PoolNotFound (404) otherwise."""
        pool = self._pools.get(pool_id)
        if pool is None or pool.namespace != namespace or pool.reserve:
            raise PoolNotFound(f"Sandbox pool '{pool_id}' not found in namespace '{namespace}'")
        return pool

    def in_namespace(self, namespace: str) -> list[PoolRecord]:
        """Oldest first."""
        return sorted((p for p in self._pools.values() if p.namespace == namespace and not p.reserve),
                      key=lambda p: p.created_at)

    def warm_sandbox_ids(self) -> set[str]:
        """The sandbox ids the unclaimed containers of every pool run under."""
        return {w.sandbox_id for p in self._pools.values() for w in p.warm}

    def owner_of(self, sandbox_id: str) -> tuple[PoolRecord, WarmContainer] | None:
        for pool in self._pools.values():
            for w in pool.warm:
                if w.sandbox_id == sandbox_id:
                    return pool, w
        return None

    async def add(self, pool: PoolRecord) -> None:
        self._pools[pool.id] = pool
        await self.store.save_pool(pool)

    async def save(self, pool: PoolRecord) -> None:
        if pool.id in self._pools:  # a pool deleted meanwhile stays deleted
            await self.store.save_pool(pool)

    async def remove(self, pool: PoolRecord) -> None:
        self._pools.pop(pool.id, None)
        await self.store.delete_pool(pool.id)

"""The live table of sandbox records: lookups, names, per-sandbox locks and the one way to move a record."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from emulator.errors import BadRequest, NameConflict, NotFound, SandboxNotFound
from emulator.model.ids import valid_name
from emulator.model.records import SandboxRecord
from emulator.model.states import SandboxStatus
from emulator.store.sqlite import Store


class SandboxTable:
    """Every sandbox record the emulator knows, by id, persisted through `store` on each change."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._records: dict[str, SandboxRecord] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def load(self, records: list[SandboxRecord]) -> None:
        self._records.update({r.id: r for r in records})

    def __iter__(self) -> Iterator[SandboxRecord]:
        return iter(list(self._records.values()))

    def get(self, sandbox_id: str) -> SandboxRecord | None:
        return self._records.get(sandbox_id)

    async def add(self, rec: SandboxRecord) -> None:
        self._records[rec.id] = rec
        await self.store.save_sandbox(rec)

    async def forget(self, rec: SandboxRecord) -> None:
        """Drop a terminated record from the table and the store (a reset's delete)."""
        self._records.pop(rec.id, None)
        self._locks.pop(rec.id, None)
        await self.store.delete_sandbox(rec.id)

    async def save(self, rec: SandboxRecord) -> None:
        await self.store.save_sandbox(rec)

    async def move(self, rec: SandboxRecord, target: SandboxStatus, **changes: Any) -> None:
        """Set `changes` on the record, move it to `target` (IllegalTransition when the table has no
        such move), stamp the times and persist, in that order."""
        for key, value in changes.items():
            setattr(rec, key, value)
        rec.move_to(target)
        await self.store.save_sandbox(rec)

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        """The lock that serialises container work (launch, dump, restore, resize) on one sandbox."""
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def lookup(self, namespace: str, ident: str) -> SandboxRecord:
        """By id, then by the name of a live sandbox (docs/protocol.md §1.3); NotFound otherwise."""
        rec = self._records.get(ident)
        if rec is not None and rec.namespace == namespace:
            return rec
        for rec in self._records.values():
            if rec.namespace == namespace and rec.name == ident and rec.live:
                return rec
        raise NotFound(f"Sandbox '{ident}' not found in namespace '{namespace}'")

    def in_namespace(self, namespace: str) -> list[SandboxRecord]:
        """Newest first."""
        return sorted((r for r in self._records.values() if r.namespace == namespace),
                      key=lambda r: r.created_at, reverse=True)

    def resolve_route(self, ident: str) -> SandboxRecord:
        """The proxy's lookup: id first, then a live sandbox's name, in any namespace (§1.2)."""
        rec = self._records.get(ident)
        if rec is None:
            live = [r for r in self._records.values() if r.name == ident and r.live]
            rec = live[0] if live else None
        if rec is None:
            raise SandboxNotFound("Sandbox not found")
        return rec

    def check_name(self, namespace: str, name: str, exclude: str | None = None) -> None:
        """BadRequest for a malformed name, NameConflict when a live sandbox has it."""
        if not valid_name(name):
            raise BadRequest(f"Invalid sandbox name '{name}': use 1-63 letters, digits, '-' or '_', "
                             "starting with a letter or digit")
        for r in self._records.values():
            if r.namespace == namespace and r.name == name and r.live and r.id != exclude:
                raise NameConflict(f"A sandbox named '{name}' already exists in namespace '{namespace}' ({r.id})")

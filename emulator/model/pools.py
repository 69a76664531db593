"""Sandbox pools (PROTOCOL.md §6.8, the SDK's `create_pool` ... `claim`): the pool record and its warm containers.

A pool is a sandbox template (`SandboxOptions` plus image) and a warm target. Each warm container is
started already under a fresh sandbox id: a claim turns that id into a sandbox record, so the
container's hostname, labels, run folder and agent socket need no change. Containers already
claimed are not kept here: they are the live sandbox records whose `pool_id` is the pool's.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, Field

from emulator.model.records import SandboxOptions, now_ms


def new_pool_id() -> str:
    return f"pool-{uuid.uuid4().hex[:16]}"


def new_container_entry_id() -> str:
    return f"ctr-{uuid.uuid4().hex[:16]}"


class WarmContainer(BaseModel):
    """An unclaimed container of a pool. `ready` once its agent answered; `container_id` once created."""

    id: str = Field(default_factory=new_container_entry_id)
    sandbox_id: str  # the id it runs under and the claim's sandbox will have
    container_id: str | None = None
    ready: bool = False
    created_at: int = Field(default_factory=now_ms)
    # Docker's runtime it was created under (model/runtimes.py docker_runtime), which a claim's record takes;
    # None in entries from before it
    docker_runtime: str | None = None
    # removed (pool deleted or changed) while its start was under way: the start task removes it
    discarded: bool = Field(default=False, exclude=True)


class PoolRecord(SandboxOptions):
    """A pool: the options each of its sandboxes gets, its warm target and its unclaimed containers.

    `max_containers` None: no limit. `warm_containers` 0: nothing kept warm. Times in epoch ms.
    """

    id: str = Field(default_factory=new_pool_id)
    namespace: str
    image: str
    max_containers: int | None = None
    warm_containers: int = 0
    secret_names: list[str] | None = None
    created_at: int = Field(default_factory=now_ms)
    updated_at: int = Field(default_factory=now_ms)
    session_label: str | None = None
    # the emulator's own warm reserve for plain creates (TLE_WARM_RESERVE): no API, sandboxes have no pool_id
    reserve: bool = False
    retry_after_ms: int = 0  # no new warm start before this time (a start just failed)
    start_failures: int = 0  # warm starts failed in a row: the back-off doubles with each
    warm: list[WarmContainer] = Field(default_factory=list)

    def template(self) -> dict[str, Any]:
        """What changes a warm container: a change of any of these recycles the idle ones."""
        return {"image": self.image, "cpus": self.cpus, "memory_mb": self.memory_mb, "disk_mb": self.disk_mb,
                "entrypoint": self.entrypoint, "network_policy": self.network_policy}

"""Pydantic models of the pool wire shapes (PROTOCOL.md §6.8, §16.2), field for field."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictInt

from emulator.api import validation as v
from emulator.api.wire import FileSystemMount, GpuSpec, NetworkPolicy, Resources, _Request
from emulator.manager.pools import PoolConfig, PoolContainerView
from emulator.model.pools import PoolRecord
from emulator.model.spec import SandboxSpec

# The SDK reads both as optional integers; a pool larger than this is not one a laptop can hold.
PoolSize = Annotated[StrictInt, Field(ge=0, le=10_000)]
EXECUTOR_ID = "local"  # the one "executor" of an emulator: this host


class PoolResourcesIn(_Request):
    cpus: v.Cpus | None = None
    memory_mb: v.MiB | None = None
    disk_mb: v.MiB | None = None
    ephemeral_disk_mb: v.MiB | None = None  # what SDKs up to 0.5.113 send for disk_mb
    gpus: list[GpuSpec] | None = Field(default=None, max_length=64)


class PoolRequest(_Request):
    """POST (create) and PUT (replace) of a pool: `image` and `resources` required by the SDK models,
    optional here (the emulator's defaults)."""

    image: v.ImageRef | None = None
    resources: PoolResourcesIn | None = None
    timeout_secs: v.Seconds | None = None
    entrypoint: v.Entrypoint | None = None
    max_containers: PoolSize | None = None
    warm_containers: PoolSize | None = None
    network: NetworkPolicy | None = None
    secret_names: list[v.Text] | None = Field(default=None, max_length=256)

    def to_config(self, session_label: str | None) -> PoolConfig:
        """The pool's configuration; a PUT without `network` keeps the pool's (PROTOCOL.md §6.8)."""
        res = self.resources
        disk = (res.disk_mb or res.ephemeral_disk_mb) if res else None
        spec = SandboxSpec(
            image=self.image, cpus=res.cpus if res else None, memory_mb=res.memory_mb if res else None,
            disk_mb=disk, timeout_secs=self.timeout_secs, entrypoint=self.entrypoint,
            network_policy=self.network.model_dump() if self.network else None, session_label=session_label,
        )
        return PoolConfig(spec=spec, max_containers=self.max_containers, warm_containers=self.warm_containers,
                          secret_names=self.secret_names, keep_network="network" not in self.model_fields_set)


class ClaimRequest(_Request):
    file_systems: list[FileSystemMount] | None = None


class CreatePoolResponse(BaseModel):
    pool_id: str
    namespace: str


class PoolContainerInfo(BaseModel):
    id: str
    state: str
    sandbox_id: str | None
    executor_id: str


class PoolInfo(BaseModel):
    id: str  # not also `pool_id`: the SDK's alias of `id`
    namespace: str
    image: str
    resources: Resources
    timeout_secs: int
    entrypoint: list[str] | None
    max_containers: int | None
    warm_containers: int | None
    network_policy: dict[str, Any] | None
    secret_names: list[str] | None
    containers: list[PoolContainerInfo] | None
    created_at: int
    updated_at: int


def pool_info(pool: PoolRecord, containers: list[PoolContainerView] | None = None) -> PoolInfo:
    """pool as the SDK reads it; `containers` only for get_pool (None in list and update, as upstream)."""
    return PoolInfo(
        id=pool.id, namespace=pool.namespace, image=pool.image,
        resources=Resources(cpus=pool.cpus, memory_mb=pool.memory_mb, disk_mb=pool.disk_mb,
                            ephemeral_disk_mb=pool.disk_mb),
        timeout_secs=pool.timeout_secs or 0, entrypoint=pool.entrypoint, max_containers=pool.max_containers,
        warm_containers=pool.warm_containers, network_policy=pool.network_policy, secret_names=pool.secret_names,
        containers=None if containers is None else [
            PoolContainerInfo(id=c.id, state=c.state, sandbox_id=c.sandbox_id, executor_id=EXECUTOR_ID)
            for c in containers],
        created_at=pool.created_at, updated_at=pool.updated_at,
    )

"""Pydantic models of every lifecycle wire shape (docs/protocol.md §6, §16), field for field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from emulator.api import validation as v
from emulator.model.records import SandboxRecord, SnapshotRecord
from emulator.model.spec import SandboxSpec

# ---- requests ------------------------------------------------------------------------------------
# Every field is limited to what the SDK can read back (api/validation.py): a value stored here is
# served to every `list()` of the namespace, and one the SDK cannot parse breaks all of them.


class _Request(BaseModel):
    # Unknown fields are ignored (newer SDKs may send more); wrong types and ranges are a 400.
    model_config = ConfigDict(extra="ignore")


class GpuSpec(_Request):
    count: v.GpuCount = 1
    model: v.GpuModel | None = None


class ResourcesIn(_Request):
    cpus: v.Cpus | None = None
    memory_mb: v.MiB | None = None
    disk_mb: v.MiB | None = None
    gpus: list[GpuSpec] | None = Field(default=None, max_length=64)


class NetworkPolicy(_Request):
    allow_internet_access: StrictBool = True
    allow_out: v.NetworkRules = Field(default_factory=list)
    deny_out: v.NetworkRules = Field(default_factory=list)


class FileSystemMount(_Request):
    """The SDK's FileSystemMount (model/file_systems.py checks the values the SDK checks)."""

    file_system_id: v.Text
    mount_path: v.Text
    read_only: StrictBool | None = None
    prefetch: StrictBool | None = None
    snapshot_id: v.Text | None = None
    owner: v.Text | None = None


class DetachFileSystem(_Request):
    mount_path: v.Text


class CreateSandboxRequest(_Request):
    image: v.ImageRef | None = None
    resources: ResourcesIn | None = None
    timeout_secs: v.Seconds | None = None
    entrypoint: v.Entrypoint | None = None
    network: NetworkPolicy | None = None
    snapshot_id: v.SnapshotId | None = None
    name: v.SandboxName | None = None
    file_systems: list[FileSystemMount] | None = None
    auto_resume: StrictBool | None = None
    allow_unauthenticated_access: StrictBool | None = None
    exposed_ports: v.Ports | None = None
    max_pending_secs: v.Seconds | None = None
    wait: StrictBool | None = None

    def to_spec(self, session_label: str | None) -> SandboxSpec:
        """The create options, once (model/spec.py); `session_label` from the X-TLE-Session header."""
        res = self.resources
        return SandboxSpec(
            image=self.image, cpus=res.cpus if res else None, memory_mb=res.memory_mb if res else None,
            disk_mb=res.disk_mb if res else None, timeout_secs=self.timeout_secs, entrypoint=self.entrypoint,
            network_policy=self.network.model_dump() if self.network else None, name=self.name,
            auto_resume=self.auto_resume, exposed_ports=self.exposed_ports,
            allow_unauthenticated_access=self.allow_unauthenticated_access,
            file_systems=None if self.file_systems is None else [
                m.model_dump(exclude_none=True) for m in self.file_systems],
            max_pending_secs=self.max_pending_secs, snapshot_id=self.snapshot_id, session_label=session_label,
        )


class UpdateSandboxRequest(_Request):
    name: v.SandboxName | None = None
    allow_unauthenticated_access: StrictBool | None = None
    exposed_ports: v.Ports | None = None
    auto_resume: StrictBool | None = None
    network: NetworkPolicy | None = None
    resources: ResourcesIn | None = None


class SnapshotRequest(_Request):
    snapshot_type: Literal["memory", "filesystem"] | None = None


# ---- responses -----------------------------------------------------------------------------------


class Resources(BaseModel):
    cpus: float
    memory_mb: int
    disk_mb: int
    ephemeral_disk_mb: int  # for SDKs before 0.5.163


class SandboxInfo(BaseModel):
    # Only `id`: the SDK's Rust client treats `sandbox_id` as an alias and rejects both together.
    id: str
    namespace: str
    name: str | None
    status: str
    pending_reason: str | None
    image: str | None
    resources: Resources
    timeout_secs: int | None
    entrypoint: list[str] | None
    network_policy: dict[str, Any] | None
    pool_id: str | None = None
    outcome: str | None
    termination_reason: str | None
    error_details: str | None
    created_at: int
    started_at: int | None
    terminated_at: int | None
    allow_unauthenticated_access: bool
    exposed_ports: list[int]
    sandbox_url: str | None
    ingress_endpoint: str | None = None
    routing_hint: str | None = None
    file_systems: list[dict[str, Any]]
    auto_resume: bool
    runtime: str
    resource_resize: dict[str, Any] | None


class CreateSandboxResponse(BaseModel):
    sandbox_id: str
    status: str
    name: str | None
    sandbox_url: str | None
    ingress_endpoint: str | None = None
    routing_hint: str | None = None
    pending_reason: str | None
    reason: str | None
    termination_reason: str | None
    error_details: str | None


class SnapshotInfo(BaseModel):
    id: str  # not also `snapshot_id`: an alias of `id` for the SDK, so both would be a duplicate
    namespace: str
    sandbox_id: str
    base_image: str | None
    status: str
    snapshot_type: str
    error: str | None
    snapshot_uri: str | None = None
    snapshot_format_version: str = "v1"
    size_bytes: int | None
    rootfs_disk_bytes: int | None = None
    created_at: int


class CreateSnapshotResponse(BaseModel):
    snapshot_id: str
    status: str


ROUTABLE = {"running", "suspended", "suspending", "snapshotting"}


def sandbox_url_for(rec: SandboxRecord, proxy_url: str) -> str | None:
    return proxy_url if rec.status in ROUTABLE else None


def _readable_int(value: int | None) -> int | None:
    return None if value is None else max(-v.I64_MAX - 1, min(value, v.I64_MAX))


def sandbox_info(rec: SandboxRecord, proxy_url: str, runtime: str) -> SandboxInfo:
    """rec as the SDK reads it. Values outside the SDK's types, which emulators before the request
    checks of api/validation.py stored, are served clamped or left out, so that one old record
    cannot make every `list()` of its namespace fail."""
    return SandboxInfo(
        id=rec.id, namespace=rec.namespace, name=rec.name, status=str(rec.status),
        pending_reason=rec.pending_reason if rec.status == "pending" else None, image=rec.image,
        resources=Resources(cpus=rec.cpus, memory_mb=_readable_int(rec.memory_mb) or 0,
                            disk_mb=_readable_int(rec.disk_mb) or 0, ephemeral_disk_mb=_readable_int(rec.disk_mb) or 0),
        timeout_secs=_readable_int(rec.timeout_secs), entrypoint=rec.entrypoint, network_policy=rec.network_policy,
        pool_id=rec.pool_id,
        outcome=rec.outcome, termination_reason=rec.termination_reason, error_details=rec.error_details,
        created_at=rec.created_at, started_at=rec.started_at, terminated_at=rec.terminated_at,
        allow_unauthenticated_access=rec.allow_unauthenticated_access,
        exposed_ports=[p for p in rec.exposed_ports if 0 <= p <= 65535],
        sandbox_url=sandbox_url_for(rec, proxy_url), file_systems=rec.file_systems, auto_resume=rec.auto_resume,
        runtime=runtime,
        resource_resize=rec.resource_resize.model_dump() if rec.resource_resize else None,
    )


def create_response(rec: SandboxRecord, proxy_url: str, status: str | None = None) -> CreateSandboxResponse:
    return CreateSandboxResponse(
        sandbox_id=rec.id, status=status or str(rec.status), name=rec.name,
        sandbox_url=sandbox_url_for(rec, proxy_url), pending_reason=rec.pending_reason,
        reason=rec.termination_reason, termination_reason=rec.termination_reason,
        error_details=rec.error_details,
    )


def snapshot_info(snap: SnapshotRecord) -> SnapshotInfo:
    return SnapshotInfo(
        id=snap.id, namespace=snap.namespace, sandbox_id=snap.sandbox_id,
        base_image=snap.base_image, status=snap.status, snapshot_type=snap.snapshot_type, error=snap.error,
        size_bytes=snap.size_bytes, created_at=snap.created_at,
    )

"""The emulator's own view of sandboxes and snapshots: what the store persists and the manager mutates.

Wire shapes live in api/wire.py; these records carry extra bookkeeping (container id, deadlines)
that never goes on the wire.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

SandboxStatus = Literal["pending", "running", "snapshotting", "suspending", "suspended", "terminated"]
SnapshotStatus = Literal["in_progress", "local_ready", "completed", "failed", "deleting"]


def now_ms() -> int:
    return int(time.time() * 1000)


class ResourceResize(BaseModel):
    generation: int
    requested: dict[str, Any]
    status: Literal["pending", "succeeded", "failed"]
    error_message: str | None = None


class SandboxRecord(BaseModel):
    id: str
    namespace: str
    name: str | None = None
    status: SandboxStatus = "pending"
    pending_reason: str | None = "scheduling"
    image: str
    cpus: float
    memory_mb: int
    disk_mb: int
    timeout_secs: int | None = None
    entrypoint: list[str] | None = None
    network_policy: dict[str, Any] | None = None
    outcome: str | None = None
    termination_reason: str | None = None
    error_details: str | None = None
    created_at: int = Field(default_factory=now_ms)
    started_at: int | None = None
    terminated_at: int | None = None
    allow_unauthenticated_access: bool = False
    exposed_ports: list[int] = Field(default_factory=list)
    file_systems: list[dict[str, Any]] = Field(default_factory=list)
    auto_resume: bool = True
    resource_resize: ResourceResize | None = None
    max_pending_secs: int | None = None
    # bookkeeping, never on the wire
    container_id: str | None = None
    deadline_ms: int | None = None
    restored_from: str | None = None
    suspend_checkpoint: str | None = None
    session_label: str | None = None

    @property
    def live(self) -> bool:
        return self.status != "terminated"


class SnapshotRecord(BaseModel):
    id: str
    namespace: str
    sandbox_id: str
    status: SnapshotStatus = "in_progress"
    snapshot_type: Literal["memory", "filesystem"] = "memory"
    base_image: str
    error: str | None = None
    size_bytes: int | None = None
    created_at: int = Field(default_factory=now_ms)
    # what a restore needs: the committed filesystem image and the CRIU dump folder
    image_ref: str | None = None
    checkpoint_dir: str | None = None
    cpus: float = 1.0
    memory_mb: int = 1024
    disk_mb: int = 10240
    entrypoint: list[str] | None = None
    network_policy: dict[str, Any] | None = None
    exposed_ports: list[int] = Field(default_factory=list)
    allow_unauthenticated_access: bool = False
    timeout_secs: int | None = None
    session_label: str | None = None

"""The emulator's own view of sandboxes and snapshots: what the store persists and the manager moves.

Wire shapes live in api/wire.py; these records carry extra bookkeeping (container id, deadlines)
that never goes on the wire. Times are epoch milliseconds.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from emulator.clock import now_ms as _clock_now_ms
from emulator.model.states import SandboxStatus, check_transition

SnapshotStatus = Literal["in_progress", "local_ready", "completed", "failed", "deleting"]


def now_ms() -> int:
    """The emulator's time in epoch milliseconds: the wall clock plus any advance (emulator/clock.py)."""
    return _clock_now_ms()


class ResourceResize(BaseModel):
    generation: int
    requested: dict[str, Any]
    status: Literal["pending", "succeeded", "failed"]
    error_message: str | None = None


class SandboxOptions(BaseModel):
    """The resolved options a sandbox runs with, which a snapshot keeps and a restore inherits.

    Written once here: SandboxRecord and SnapshotRecord extend it, SandboxSpec resolves onto it.
    cpus in cores, memory_mb and disk_mb in MiB, timeout_secs in seconds (None: no deadline).
    """

    cpus: float = 1.0
    memory_mb: int = 1024
    disk_mb: int = 10240
    timeout_secs: int | None = None
    entrypoint: list[str] | None = None
    network_policy: dict[str, Any] | None = None
    exposed_ports: list[int] = Field(default_factory=list)
    allow_unauthenticated_access: bool = False
    # the OCI runtime (model/runtimes.py); None in records of emulators before it: the default then
    runtime: str | None = None

    def options(self) -> dict[str, Any]:
        """The option fields alone, for building another record that inherits them."""
        return {k: getattr(self, k) for k in SandboxOptions.model_fields}


class SandboxRecord(SandboxOptions):
    id: str
    namespace: str
    name: str | None = None
    status: SandboxStatus = SandboxStatus.pending
    pending_reason: str | None = "scheduling"
    image: str
    outcome: str | None = None
    termination_reason: str | None = None
    error_details: str | None = None
    created_at: int = Field(default_factory=now_ms)
    started_at: int | None = None
    terminated_at: int | None = None
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
    # a pool claim: the pool, and the pool's container entry it took (its id in `get_pool`)
    pool_id: str | None = None
    pool_container_id: str | None = None
    # Docker's runtime of the container (model/runtimes.py docker_runtime: runsc-nonet, runsc-netstack ...), set at
    # each launch; a snapshot keeps its sandbox's, so a memory one restores under the same. None in records of
    # emulators before it (runsc-nonet then ran exactly the gVisor sandboxes without internet access).
    docker_runtime: str | None = None

    @property
    def live(self) -> bool:
        return self.status != SandboxStatus.terminated

    def move_to(self, target: SandboxStatus, now: int | None = None) -> None:
        """Move to `target` (raises IllegalTransition if the table has no such move) and stamp it.

        Leaving pending clears the pending reason; the first running stamps started_at; terminated
        stamps terminated_at; suspended and terminated clear the deadline (a resume sets a new one).
        """
        check_transition(self.status, target, self.id)
        stamp = now if now is not None else now_ms()
        self.status = target
        if target != SandboxStatus.pending:
            self.pending_reason = None
        if target == SandboxStatus.running and self.started_at is None:
            self.started_at = stamp
        if target in (SandboxStatus.suspended, SandboxStatus.terminated):
            self.deadline_ms = None
        if target == SandboxStatus.terminated:
            self.terminated_at = stamp


class SnapshotRecord(SandboxOptions):
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
    session_label: str | None = None
    # the sandbox's file-system mounts, which a restored copy gets again (their data is not in the snapshot)
    file_systems: list[dict[str, Any]] = Field(default_factory=list)
    # made by `copy` for its restores only: deleted after them, and at start-up if a crash cut it off
    transient: bool = False
    # Docker's runtime of the container (model/runtimes.py docker_runtime: runsc-nonet, runsc-netstack ...), set at
    # each launch; a snapshot keeps its sandbox's, so a memory one restores under the same. None in records of
    # emulators before it (runsc-nonet then ran exactly the gVisor sandboxes without internet access).
    docker_runtime: str | None = None

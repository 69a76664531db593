"""Sandbox images built by the emulator (issue 13 part 2): the registered image and its build.

The SDK's CAS image flow (docs/protocol.md, "Sandbox images") admits a build, uploads a tar context,
seals it and polls the build until it has a result. Here a build is a `docker build` on the local
engine; the image it makes is tagged with the registered name, so `create(image=name)` and pools
use it like any local image. Times are epoch milliseconds.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field

from emulator.model.records import now_ms

# cas: the SDK's default flow (/images/v4); legacy: the template flow of older SDKs (/platform/v1)
ImageFamily = Literal["cas", "legacy"]
BuildStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]
BuildPhase = Literal["awaiting_context", "starting_builder", "executing", "snapshotting", "publishing",
                     "finished"]


def new_image_id() -> str:
    return f"image_{uuid.uuid4().hex[:24]}"


def new_build_id() -> str:
    return f"build_{uuid.uuid4().hex[:24]}"


class ImageRecord(BaseModel):
    """A registered sandbox image. `docker_ref` is the local tag sandboxes run (the name itself);
    `docker_id` the engine's image id (sha256:...); sizes in bytes."""

    id: str = Field(default_factory=new_image_id)
    name: str
    namespace: str = "default"
    docker_ref: str
    docker_id: str
    family: ImageFamily = "cas"
    size_bytes: int = 0
    disk_mb: int = 10240
    dockerfile: str = ""
    session_label: str | None = None
    build_id: str | None = None
    created_at: int = Field(default_factory=now_ms)
    updated_at: int = Field(default_factory=now_ms)


class BuildRecord(BaseModel):
    """One build: what was asked (builder cpus, memory in MiB, disk in MiB), where it is, its log.

    `log` keeps the last lines of the engine's output (bounded by the manager); `error` is set when
    `status` is failed or cancelled; `image_id` when succeeded.
    """

    build_id: str = Field(default_factory=new_build_id)
    name: str
    namespace: str = "default"
    kind: Literal["dockerfile"] = "dockerfile"
    family: ImageFamily = "cas"
    dockerfile_text: str | None = None  # legacy builds: the Dockerfile comes with the prepare call
    dockerfile_path: str = "Dockerfile"
    build_args: dict[str, str] = Field(default_factory=dict)
    cpus: float = 2.0
    memory_mb: int = 4096
    disk_mb: int = 10240
    client_request_id: str | None = None
    session_label: str | None = None
    status: BuildStatus = "pending"
    phase: BuildPhase = "awaiting_context"
    attempt_no: int = 1
    error: str | None = None
    image_id: str | None = None
    builder_sandbox_id: str | None = None  # the sandbox mirroring the log to the SDK (manager/image_logs.py)
    log: list[str] = Field(default_factory=list)
    created_at: int = Field(default_factory=now_ms)
    updated_at: int = Field(default_factory=now_ms)

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

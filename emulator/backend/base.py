"""The runtime backend interface: the only layer that talks to a container engine.

The manager depends on this protocol, never on Docker itself, so a faster checkpoint path
(runc directly, Podman) is a different backend, not a fork of the manager.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# The label rules live in emulator.labels (shared with the CLI and the pytest plugin); re-exported here
# for the modules that build containers.
from emulator.labels import (  # noqa: F401
    LABEL_INSTANCE,
    LABEL_NAMESPACE,
    LABEL_POOL,
    LABEL_PREFIX,
    LABEL_SANDBOX,
    LABEL_SESSION,
    LABEL_SNAPSHOT,
)

AGENT_DIR_IN_SANDBOX = "/.tle/run"
# The folder holding the agent executable (Settings.agent_dir), bind-mounted read-only here; the agent runs as
# PID 1 from it: `/.tle/tle-agent --socket /.tle/run/agent.sock`. Its empty run/ is the run folder's mount point.
AGENT_BIN_DIR_IN_SANDBOX = "/.tle"
AGENT_EXE_NAME = "tle-agent"
AGENT_EXE_IN_SANDBOX = f"{AGENT_BIN_DIR_IN_SANDBOX}/{AGENT_EXE_NAME}"


@dataclass
class ContainerSpec:
    sandbox_id: str
    image: str
    cpus: float
    memory_mb: int
    pids_limit: int
    network: bool
    agent_dir: Path
    agent_code: Path  # the folder on the host holding the agent executable (Settings.agent_dir)
    runtime: str = "runc"  # Docker's runtime name: runc, or runsc / runsc-nonet / runsc-netstack (gVisor)
    entrypoint: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class ContainerState:
    container_id: str
    sandbox_id: str
    running: bool
    labels: dict[str, str]
    exit_code: int | None = None
    oom_killed: bool = False
    # Docker's `NetworkSettings.Networks` of the container ({network name: {IPAddress, MacAddress, ...}})
    networks: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineInfo:
    version: str
    runtimes: list[str]
    experimental: bool
    host_cpus: int
    host_memory_mb: int
    arch: str = ""  # the engine host's architecture in image terms (amd64, arm64); "" when unknown


@dataclass
class ImageFacts:
    """What the manager checks of an image before a sandbox uses it (`GET /images/{name}/json`)."""

    os: str
    arch: str  # as images name it: amd64, arm64, ...
    path: str  # the PATH of the image's Env, or "" when it sets none


class RuntimeBackend(Protocol):
    """Everything the manager and the checkpoint engine ask of a container engine.

    Errors: BackendUnavailable when the engine cannot be reached (nothing changed), ImageNotFound,
    RuntimeMissing, EmulatorError for a refusal. Ids are the engine's container ids.
    """

    # engine and images
    async def info(self) -> EngineInfo: ...
    async def image_exists(self, image: str) -> bool: ...
    async def image_facts(self, image: str) -> ImageFacts | None: ...
    async def commit(self, container_id: str, repo: str, tag: str) -> str: ...
    async def remove_image(self, ref: str) -> None: ...
    async def image_size(self, ref: str) -> int | None: ...
    async def prune_dangling_ours(self) -> int: ...
    def prune_exempt(self, label: str) -> AbstractContextManager[None]: ...
    async def close(self) -> None: ...
    # containers
    async def create(self, spec: ContainerSpec) -> str: ...
    async def start(self, container_id: str) -> None: ...
    async def path_exists(self, container_id: str, path: str) -> bool: ...
    async def remove(self, container_id: str) -> None: ...
    async def state(self, container_id: str) -> ContainerState | None: ...
    async def init_pid(self, container_id: str) -> int | None: ...
    async def list_ours(self) -> list[ContainerState]: ...
    def exits(self) -> AsyncIterator[str]:
        """Ids of our containers as they die (the engine's event stream); ends when the stream does."""
        ...
    async def update_resources(self, container_id: str, cpus: float, memory_mb: int) -> None: ...
    async def logs(self, container_id: str) -> str: ...
    async def run_canary(self, image: str, command: list[str]) -> str: ...
    # freezing and the engine's own checkpoints (CRIU through the engine)
    async def pause(self, container_id: str) -> None: ...
    async def signal(self, container_id: str, sig: str) -> None: ...
    async def unpause(self, container_id: str) -> None: ...
    async def list_paused_ours(self) -> list[str]: ...
    async def checkpoint(self, container_id: str, name: str, leave_running: bool) -> None: ...
    async def start_from_checkpoint(self, container_id: str, name: str) -> None: ...
    async def delete_checkpoint(self, container_id: str, name: str) -> None: ...

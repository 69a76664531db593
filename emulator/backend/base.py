"""The runtime backend interface: the only layer that talks to a container engine.

The manager depends on this protocol, never on Docker itself, so a faster checkpoint path
(runc directly, Podman) is a different backend, not a fork of the manager.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# The label rules live in emulator.labels (shared with the CLI and the pytest plugin); re-exported here
# for the modules that build containers.
from emulator.labels import (  # noqa: F401
    LABEL_INSTANCE,
    LABEL_NAMESPACE,
    LABEL_PREFIX,
    LABEL_SANDBOX,
    LABEL_SESSION,
    LABEL_SNAPSHOT,
)

AGENT_DIR_IN_SANDBOX = "/.tle/run"
# The agent package directory (emulator/agent), bind-mounted read-only and run as `python3 -B /.tle/agent`.
AGENT_CODE_IN_SANDBOX = "/.tle/agent"
AGENT_SOCKET_NAME = "agent.sock"


@dataclass
class ContainerSpec:
    sandbox_id: str
    image: str
    cpus: float
    memory_mb: int
    pids_limit: int
    network: bool
    agent_dir: Path
    agent_code: Path  # the agent package directory on the host
    entrypoint: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class ContainerState:
    container_id: str
    sandbox_id: str
    running: bool
    labels: dict[str, str]


@dataclass
class EngineInfo:
    version: str
    runtimes: list[str]
    experimental: bool
    host_cpus: int
    host_memory_mb: int


class RuntimeBackend(Protocol):
    async def info(self) -> EngineInfo: ...
    async def image_exists(self, image: str) -> bool: ...
    async def create(self, spec: ContainerSpec) -> str: ...
    async def start(self, container_id: str) -> None: ...
    async def remove(self, container_id: str) -> None: ...
    async def state(self, container_id: str) -> ContainerState | None: ...
    async def list_ours(self) -> list[ContainerState]: ...
    async def update_resources(self, container_id: str, cpus: float, memory_mb: int) -> None: ...
    async def commit(self, container_id: str, repo: str, tag: str) -> str: ...
    async def remove_image(self, ref: str) -> None: ...
    async def close(self) -> None: ...

"""In-memory stand-ins for the container engine, the CRIU mechanism and the agents.

For unit tests of the manager's state machine only; every behaviour they stand for is also tested
against real Docker, CRIU and agents in tests/test_*.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.agent_channel import AgentEndpoint
from emulator.backend.base import LABEL_SANDBOX, ContainerSpec, ContainerState, EngineInfo, ImageFacts
from emulator.errors import EmulatorError


@dataclass
class FakeContainer:
    spec: ContainerSpec
    running: bool = False
    exit_code: int | None = None


@dataclass
class FakeBackend:
    """A container engine in a dict. `fail_create`/`fail_start` raise; `start_delay` (s) slows start."""

    containers: dict[str, FakeContainer] = field(default_factory=dict)
    images: set[str] = field(default_factory=lambda: {"tensorlake-emulator/sandbox:latest"})
    fail_create: EmulatorError | None = None
    fail_start: EmulatorError | None = None
    start_delay: float = 0.0
    removed: list[str] = field(default_factory=list)
    exit_queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    async def info(self) -> EngineInfo:
        return EngineInfo(version="fake", runtimes=["runc"], experimental=True, host_cpus=2, host_memory_mb=4096)

    async def image_exists(self, image: str) -> bool:
        return image in self.images

    async def image_facts(self, image: str) -> ImageFacts | None:
        return ImageFacts(os="linux", arch="amd64", path="") if image in self.images else None

    async def path_exists(self, container_id: str, path: str) -> bool:
        return True

    async def commit(self, container_id: str, repo: str, tag: str) -> str:
        self.images.add(f"{repo}:{tag}")
        return f"sha256:{tag}"

    async def remove_image(self, ref: str) -> None:
        self.images.discard(ref)

    async def image_size(self, ref: str) -> int | None:
        return 0

    async def prune_dangling_ours(self) -> int:
        return 0

    @contextlib.contextmanager
    def prune_exempt(self, label: str) -> Iterator[None]:
        yield

    async def close(self) -> None:
        pass

    async def create(self, spec: ContainerSpec) -> str:
        if self.fail_create:
            raise self.fail_create
        cid = f"c{next(self._ids):04d}"
        self.containers[cid] = FakeContainer(spec)
        return cid

    async def start(self, container_id: str) -> None:
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        if self.fail_start:
            raise self.fail_start
        self.containers[container_id].running = True

    async def remove(self, container_id: str) -> None:
        if self.containers.pop(container_id, None) is not None:
            self.removed.append(container_id)

    async def state(self, container_id: str) -> ContainerState | None:
        c = self.containers.get(container_id)
        return None if c is None else ContainerState(container_id, c.spec.sandbox_id, c.running, {},
                                                     exit_code=c.exit_code)

    async def init_pid(self, container_id: str) -> int | None:
        return 1 if container_id in self.containers else None

    async def list_ours(self) -> list[ContainerState]:
        return [ContainerState(cid, c.spec.sandbox_id, c.running, {LABEL_SANDBOX: c.spec.sandbox_id})
                for cid, c in self.containers.items()]

    async def exits(self) -> AsyncIterator[str]:
        while True:
            yield await self.exit_queue.get()

    def kill(self, container_id: str, exit_code: int = 137) -> None:
        """The container dies on its own (as `docker kill` from outside would do it)."""
        self.containers[container_id].running = False
        self.containers[container_id].exit_code = exit_code
        self.exit_queue.put_nowait(container_id)

    async def update_resources(self, container_id: str, cpus: float, memory_mb: int) -> None:
        self.containers[container_id].spec.cpus, self.containers[container_id].spec.memory_mb = cpus, memory_mb

    async def logs(self, container_id: str) -> str:
        return ""

    async def run_canary(self, image: str, command: list[str]) -> str:
        raise EmulatorError("no canary in the fake")

    async def pause(self, container_id: str) -> None:
        pass

    async def unpause(self, container_id: str) -> None:
        pass

    async def list_paused_ours(self) -> list[str]:
        return []

    async def checkpoint(self, container_id: str, name: str, leave_running: bool) -> None:
        raise EmulatorError("the fake mechanism does not use the engine's checkpoints")

    async def start_from_checkpoint(self, container_id: str, name: str) -> None:
        raise EmulatorError("the fake mechanism does not use the engine's checkpoints")

    async def delete_checkpoint(self, container_id: str, name: str) -> None:
        pass


@dataclass
class FakeMechanism:
    """CRIU in a folder: a dump writes inventory.img and stops the container; restore starts it."""

    backend: FakeBackend
    root: Path
    fail_dump: EmulatorError | None = None
    fail_restore: EmulatorError | None = None
    name: str = "fake"

    def checkpoint_dir(self, container_id: str, name: str) -> Path:
        return self.root / container_id / name

    async def dump_stop(self, container_id: str, name: str) -> None:
        if self.fail_dump:
            raise self.fail_dump
        _write_dump(self.checkpoint_dir(container_id, name))
        self.backend.containers[container_id].running = False

    async def restore_in_place(self, container_id: str, name: str) -> None:
        if self.fail_restore:
            raise self.fail_restore
        self.backend.containers[container_id].running = True

    async def dump_running(self, container_id: str, name: str, dest: Path) -> None:
        if self.fail_dump:
            raise self.fail_dump
        _write_dump(dest)

    async def restore_new(self, container_id: str, name: str, src: Path) -> None:
        self.backend.containers[container_id].running = True

    async def sweep(self, live_container_ids: set[str]) -> None:
        pass

    async def thaw(self, container_ids: list[str]) -> None:
        pass

    async def freeze(self, container_id: str) -> None:
        pass

    async def discard(self, container_id: str, name: str) -> None:
        d = self.checkpoint_dir(container_id, name)
        if d.exists():
            (d / "inventory.img").unlink(missing_ok=True)
            d.rmdir()


def _write_dump(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "inventory.img").write_bytes(b"dump")


@dataclass
class FakeAgents:
    """Agents that answer (or not, with `healthy=False`) at once."""

    healthy: bool = True
    closed: list[str] = field(default_factory=list)

    async def wait_healthy(self, endpoint: AgentEndpoint, timeout: float, alive: Any = None) -> bool:
        return self.healthy

    async def close(self, sandbox_id: str) -> None:
        self.closed.append(sandbox_id)

    async def close_all(self) -> None:
        pass

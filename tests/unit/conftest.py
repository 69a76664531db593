"""A SandboxManager on fakes (tests/unit/fakes.py) and a real SQLite store in a temporary folder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from emulator.checkpoints.engine import CheckpointEngine
from emulator.checkpoints.probe import CriuProbe
from emulator.config import Settings
from emulator.manager.sandboxes import SandboxManager
from emulator.store.sqlite import Store
from tests.unit.fakes import FakeAgents, FakeBackend, FakeMechanism


@dataclass
class Rig:
    manager: SandboxManager
    backend: FakeBackend
    mechanism: FakeMechanism
    agents: FakeAgents
    store: Store
    settings: Settings

    def restart(self) -> SandboxManager:
        """A second manager on the same store and engine, as after an emulator restart."""
        return _manager(self.settings, self.store, self.backend, self.agents, self.mechanism)


def _manager(settings: Settings, store: Store, backend: FakeBackend, agents: FakeAgents,
             mechanism: FakeMechanism) -> SandboxManager:
    engine = CheckpointEngine(backend, store, settings.data_dir, settings.data_dir / "docker",  # type: ignore[arg-type]
                              CriuProbe(True, "fake"), mechanism, settings.default_image)  # type: ignore[arg-type]
    return SandboxManager(settings, store, backend, agents, engine)  # type: ignore[arg-type]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    # No warm reserve by default: these tests count containers (tests/unit/test_pools.py turns it on).
    settings = Settings(data_dir=tmp_path / "data", startup_timeout=1.0, warm_reserve=0)
    store = Store(settings.data_dir / "state.sqlite3")
    backend = FakeBackend()
    mechanism = FakeMechanism(backend, tmp_path / "dumps")
    agents = FakeAgents()
    rig = Rig(_manager(settings, store, backend, agents, mechanism), backend, mechanism, agents, store, settings)
    await rig.manager.start(reap=False)
    yield rig
    await rig.manager.stop()
    store.close()


@pytest.fixture
def spec() -> Callable[..., object]:
    from emulator.model.spec import SandboxSpec

    return SandboxSpec

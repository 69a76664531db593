"""Clock control and reset on the fake engine: the max_pending_secs deadline fires on an advance."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulator.clock import CLOCK
from emulator.model.records import now_ms
from emulator.model.spec import SandboxSpec
from emulator.model.states import SandboxStatus
from tests.unit.conftest import Rig

S = SandboxStatus


@pytest.fixture(autouse=True)
def _wall_clock() -> Iterator[None]:
    yield
    CLOCK.restore(0)  # the clock is process-wide: later tests start on the wall clock


async def test_advance_ends_a_launch_past_max_pending_secs(rig: Rig) -> None:
    rig.backend.start_delay = 5.0
    rec = await rig.manager.create("default", SandboxSpec(max_pending_secs=60))
    before = now_ms()
    assert await rig.manager.advance_clock(30) == []
    fired = await rig.manager.advance_clock(31)
    assert fired == [(rec.id, "pending_timeout")]
    assert rec.status == S.terminated and rec.outcome == "Failure(NoCapacity)"
    assert rec.terminated_at is not None and rec.terminated_at - before >= 61_000
    assert rig.store.get_meta("clock_offset_ms") == "61000"


async def test_reset_forgets_records_and_snapshots_of_the_scope(rig: Rig) -> None:
    a = await rig.manager.create("one", SandboxSpec(session_label="s1"))
    b = await rig.manager.create("one", SandboxSpec(session_label="s2"))
    c = await rig.manager.create("two", SandboxSpec(session_label="s1"))
    for rec in (a, b, c):
        await rig.manager.wait_started(rec, 5)
    snap = await rig.manager.snapshot(a, "filesystem")
    report = await rig.manager.reset("one", "s1")
    assert report["sandboxes"] == report["terminated"] == [a.id]
    assert report["snapshots"] == [snap.id] and report["errors"] == []
    assert [r.id for r in rig.manager.list_sandboxes("one")] == [b.id]
    assert sorted(r.id for r in rig.store.load_sandboxes()) == sorted([b.id, c.id])
    assert rig.store.load_snapshots() == []
    report = await rig.manager.reset(None, "s1")
    assert report["sandboxes"] == [c.id] and b.status == S.running

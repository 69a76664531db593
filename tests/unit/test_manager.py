"""The manager's state machine on a fake engine (no Docker): create, failures, terminate during
create, suspend/resume failure paths, the timeout reaper with an injected clock, reconcile."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from emulator.errors import BadRequest, EmulatorError, EphemeralSandbox, ImageNotFound, InvalidState, NameConflict
from emulator.manager.watch import watch_exits
from emulator.model.records import now_ms
from emulator.model.spec import SandboxSpec
from emulator.model.states import SandboxStatus
from tests.unit.conftest import Rig

S = SandboxStatus


async def _running(rig: Rig, **options: object):
    rec = await rig.manager.create("default", SandboxSpec(**options))  # type: ignore[arg-type]
    await rig.manager.wait_started(rec, 5)
    assert rec.status == S.running, rec
    return rec


async def test_create_runs_with_the_resolved_spec(rig: Rig) -> None:
    rec = await _running(rig, cpus=0.5, memory_mb=256, timeout_secs=60, name="a")
    c = rig.backend.containers[rec.container_id]  # type: ignore[index]
    assert (c.running, c.spec.cpus, c.spec.memory_mb) == (True, 0.5, 256)
    assert rec.started_at and rec.deadline_ms and rec.deadline_ms - now_ms() > 55_000
    assert (rig.settings.data_dir / "run" / rec.id).is_dir()
    assert [r.id for r in rig.store.load_sandboxes()] == [rec.id]
    with pytest.raises(NameConflict):
        await rig.manager.create("default", SandboxSpec(name="a"))


async def test_create_refused_before_anything_is_made(rig: Rig) -> None:
    with pytest.raises(ImageNotFound):
        await rig.manager.create("default", SandboxSpec(image="nope:1"))
    with pytest.raises(BadRequest):
        await rig.manager.create("default", SandboxSpec(cpus=64))
    assert rig.backend.containers == {} and rig.store.load_sandboxes() == []


@pytest.mark.parametrize("where", ["create", "start", "agent"])
async def test_a_failed_launch_terminates_with_the_reason(rig: Rig, where: str) -> None:
    if where == "create":
        rig.backend.fail_create = EmulatorError("engine said no")
    elif where == "start":
        rig.backend.fail_start = EmulatorError("engine said no")
    else:
        rig.agents.healthy = False
    rec = await rig.manager.create("default", SandboxSpec())
    await rig.manager.wait_started(rec, 5)
    assert rec.status == S.terminated and rec.outcome == "Failure(INTERNAL)" and rec.error_details
    assert rig.backend.containers == {}  # nothing leaked
    assert not (rig.settings.data_dir / "run" / rec.id).exists()


async def test_terminate_during_create_leaks_nothing(rig: Rig) -> None:
    rig.backend.start_delay = 0.3
    rec = await rig.manager.create("default", SandboxSpec())
    await asyncio.sleep(0.05)
    await rig.manager.terminate(rec)
    assert rec.status == S.terminated and rec.termination_reason == "cancelled"
    await rig.manager.wait_started(rec, 5)
    assert rec.status == S.terminated and rig.backend.containers == {}


async def test_suspend_and_resume(rig: Rig) -> None:
    rec = await _running(rig, name="n", timeout_secs=100)
    assert await rig.manager.suspend(rec, wait=5)
    assert rec.status == S.suspended and rec.deadline_ms is None and rec.suspend_checkpoint
    assert await rig.manager.suspend(rec, wait=5)  # already suspended: done at once
    assert await rig.manager.resume(rec, wait=5)
    assert rec.status == S.running and rec.deadline_ms and rec.suspend_checkpoint is None


async def test_suspend_refusals(rig: Rig) -> None:
    rec = await _running(rig)
    with pytest.raises(EphemeralSandbox):
        await rig.manager.suspend(rec, wait=5)
    named = await _running(rig, name="n2")
    with pytest.raises(InvalidState):
        await rig.manager.resume(await _terminated(rig, named), wait=5)


async def _terminated(rig: Rig, rec):  # type: ignore[no-untyped-def]
    await rig.manager.terminate(rec)
    return rec


async def test_a_failed_dump_keeps_it_running_and_says_why(rig: Rig) -> None:
    rec = await _running(rig, name="n")
    rig.mechanism.fail_dump = EmulatorError("criu failed: type NOTIFY")
    with pytest.raises(InvalidState, match="NOTIFY"):
        await rig.manager.suspend(rec, wait=5)
    assert rec.status == S.running


async def test_a_failed_restore_keeps_it_suspended_and_says_why(rig: Rig) -> None:
    rec = await _running(rig, name="n")
    assert await rig.manager.suspend(rec, wait=5)
    rig.mechanism.fail_restore = EmulatorError("restore broke")
    with pytest.raises(InvalidState, match="restore broke"):
        await rig.manager.resume(rec, wait=5)
    assert rec.status == S.suspended and rec.suspend_checkpoint


async def test_reaper_terminates_unnamed_and_suspends_named_at_their_deadline(rig: Rig) -> None:
    plain = await _running(rig, timeout_secs=10)
    named = await _running(rig, name="n", timeout_secs=10)
    forever = await _running(rig)
    now = now_ms()
    await rig.manager.reap_once(now + 5_000)
    assert plain.status == named.status == S.running
    await rig.manager.reap_once(now + 11_000)
    await asyncio.sleep(0.1)
    assert plain.status == S.terminated and plain.termination_reason == "timeout"
    assert named.status == S.suspended
    assert forever.status == S.running


async def test_reaper_terminates_a_named_sandbox_that_cannot_be_suspended(rig: Rig) -> None:
    named = await _running(rig, name="n", timeout_secs=1)
    rig.mechanism.fail_dump = EmulatorError("dump failed")
    await rig.manager.reap_once(now_ms() + 2_000)
    for _ in range(50):
        if named.status == S.terminated:
            break
        await asyncio.sleep(0.05)
    assert named.status == S.terminated and "dump failed" in (named.error_details or "")


async def test_reaper_ends_a_launch_past_max_pending_secs(rig: Rig) -> None:
    rig.backend.start_delay = 1.0
    rec = await rig.manager.create("default", SandboxSpec(max_pending_secs=1))
    await rig.manager.reap_once(now_ms() + 2_000)
    assert rec.status == S.terminated and rec.outcome == "Failure(NoCapacity)"


async def test_reconcile_after_restart(rig: Rig) -> None:
    gone = await _running(rig)
    stopped = await _running(rig)
    alive = await _running(rig, timeout_secs=30)
    suspended = await _running(rig, name="s")
    assert await rig.manager.suspend(suspended, wait=5)
    # What happened while the emulator was down:
    await rig.backend.remove(gone.container_id)  # type: ignore[arg-type]
    rig.backend.containers[stopped.container_id].running = False  # type: ignore[index]
    orphan_spec = dataclasses.replace(rig.backend.containers[alive.container_id].spec,  # type: ignore[index]
                                      sandbox_id="no-record")
    orphan = await rig.backend.create(orphan_spec)
    (rig.settings.data_dir / "run" / "leftover").mkdir()
    # A create cut off after its container started, before running (and its deadline) was recorded:
    cut = await _running(rig, timeout_secs=25)
    cut.status, cut.deadline_ms, cut.pending_reason = S.pending, None, "waiting_for_container"
    await rig.store.save_sandbox(cut)

    second = rig.restart()
    await second.start(reap=False)
    by_id = {r.id: r for r in second.list_sandboxes("default")}
    assert by_id[gone.id].status == S.terminated and by_id[gone.id].termination_reason == "container_lost"
    assert by_id[stopped.id].termination_reason == "container_exited"
    assert stopped.container_id not in rig.backend.containers and orphan not in rig.backend.containers
    assert by_id[alive.id].status == S.running
    assert by_id[suspended.id].status == S.suspended
    assert by_id[cut.id].status == S.running and by_id[cut.id].deadline_ms is not None
    assert not (rig.settings.data_dir / "run" / "leftover").exists()
    assert not (rig.settings.data_dir / "run" / gone.id).exists()
    await second.stop()


async def test_a_container_that_died_is_noticed_on_the_first_failed_call(rig: Rig) -> None:
    rec = await _running(rig)
    rig.backend.containers[rec.container_id].running = False  # type: ignore[index]
    rig.backend.containers[rec.container_id].exit_code = 137  # type: ignore[index]
    err = await rig.manager.agent_unreachable(rec.id, "ConnectError")
    assert err is not None and err.status == 404 and "code 137" in err.message
    assert rec.status == S.terminated and rec.termination_reason == "container_exited"
    alive = await _running(rig)
    assert await rig.manager.agent_unreachable(alive.id, "ConnectError") is None  # a live one is retried
    assert alive.status == S.running


async def test_the_exit_watch_notices_a_death_without_any_call(rig: Rig) -> None:
    rec = await _running(rig)
    named = await _running(rig, name="n")
    watcher = asyncio.create_task(watch_exits(rig.manager._ctx))
    try:
        assert await rig.manager.suspend(named, wait=5)  # stopped on purpose: not a death
        rig.backend.kill(rec.container_id)  # type: ignore[arg-type]
        for _ in range(40):
            if rec.status == S.terminated:
                break
            await asyncio.sleep(0.05)
        assert rec.status == S.terminated and rec.error_details == "its container exited (code 137)"
        assert named.status == S.suspended
    finally:
        watcher.cancel()

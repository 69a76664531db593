"""Pools on the fake engine (no Docker): CRUD, warm targets, claims (warm, starting, cold, queued at
max_containers), PoolInUse, recycling on update, start-up reconcile, timeout suspend, failed warm starts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from emulator.backend.base import LABEL_NAMESPACE, LABEL_POOL, LABEL_SESSION
from emulator.errors import BadRequest, EmulatorError, ImageNotFound, PoolInUse, PoolNotFound
from emulator.manager.pools import PoolConfig
from emulator.model.pools import PoolRecord
from emulator.model.records import now_ms
from emulator.model.spec import SandboxSpec
from emulator.model.states import SandboxStatus
from tests.unit.conftest import Rig

S = SandboxStatus


def _config(warm: int = 0, max_containers: int | None = None, **options: object) -> PoolConfig:
    return PoolConfig(spec=SandboxSpec(**options), warm_containers=warm, max_containers=max_containers)  # type: ignore[arg-type]


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def _warm_pool(rig: Rig, warm: int, max_containers: int | None = None, **options: object) -> PoolRecord:
    pool = await rig.manager.pools.create("default", _config(warm, max_containers, **options))
    await rig.manager.keep_pools_once()
    await _until(lambda: len(pool.warm) == warm and all(w.ready for w in pool.warm), "warm containers ready")
    return pool


async def test_crud_is_persisted_and_typed_errors(rig: Rig) -> None:
    pools = rig.manager.pools
    net = {"allow_internet_access": False, "allow_out": [], "deny_out": []}
    pool = await pools.create("default", _config(cpus=0.5, memory_mb=256, disk_mb=2048, timeout_secs=30,
                                                 entrypoint=["sleep", "300"], network_policy=net))
    assert pools.lookup("default", pool.id) is pool and [p.id for p in pools.list_pools("default")] == [pool.id]
    assert [p.model_dump() for p in rig.store.load_pools()] == [pool.model_dump()]
    with pytest.raises(PoolNotFound):
        pools.lookup("other-ns", pool.id)
    changed = PoolConfig(spec=SandboxSpec(memory_mb=512), warm_containers=0, keep_network=True)
    await pools.update(pool, changed)
    assert (pool.memory_mb, pool.network_policy, pool.cpus) == (512, net, 1.0)  # PUT: full config, network kept
    assert rig.store.load_pools()[0].memory_mb == 512
    with pytest.raises(BadRequest):
        await pools.create("default", _config(warm=3, max_containers=2))
    with pytest.raises(ImageNotFound):
        await pools.create("default", _config(image="nope:1"))
    await pools.delete(pool)
    assert rig.store.load_pools() == [] and pools.list_pools("default") == []
    with pytest.raises(PoolNotFound):
        pools.lookup("default", pool.id)


async def test_warm_containers_are_labelled_and_a_claim_takes_one(rig: Rig) -> None:
    pool = await rig.manager.pools.create("default", PoolConfig(
        spec=SandboxSpec(memory_mb=256, timeout_secs=60, session_label="sess-1"), warm_containers=1))
    await rig.manager.keep_pools_once()
    await _until(lambda: bool(pool.warm) and pool.warm[0].ready, "warm ready")
    entry = pool.warm[0]
    spec = rig.backend.containers[entry.container_id].spec  # type: ignore[index]
    assert spec.labels[LABEL_POOL] == pool.id and spec.labels[LABEL_SESSION] == "sess-1"
    assert spec.labels[LABEL_NAMESPACE] == "default" and spec.sandbox_id == entry.sandbox_id
    rec = await rig.manager.pools.claim(pool, None)
    # The warm container becomes the sandbox: same id (hostname, run folder, socket), running at once.
    assert (rec.id, rec.container_id, rec.status, rec.pool_id) == (entry.sandbox_id, entry.container_id, S.running,
                                                                   pool.id)
    assert rec.memory_mb == 256 and rec.deadline_ms and rec.session_label == "sess-1"
    await rig.manager.keep_pools_once()
    await _until(lambda: bool(pool.warm) and pool.warm[0].ready, "replacement warm ready")
    views = rig.manager.pools.containers(pool)
    assert [(v.state, v.sandbox_id) for v in views] == [("Idle", None), ("Running", rec.id)]
    assert views[1].id == entry.id and views[0].id != entry.id
    await rig.manager.terminate(rec)
    assert [v.state for v in rig.manager.pools.containers(pool)] == ["Idle"]


async def test_max_containers_queues_claims_until_room(rig: Rig) -> None:
    pool = await _warm_pool(rig, warm=1, max_containers=2)
    first = await rig.manager.pools.claim(pool, None)
    await rig.manager.keep_pools_once()
    await _until(lambda: bool(pool.warm) and pool.warm[0].ready, "second warm ready")
    second = await rig.manager.pools.claim(pool, None)
    await rig.manager.keep_pools_once()
    assert pool.warm == [] and first.status == second.status == S.running  # at max: no spare
    third = await rig.manager.pools.claim(pool, None)
    assert (third.status, third.pending_reason, third.container_id) == (S.pending, "pool_at_capacity", None)
    assert len(rig.backend.containers) == 2
    with pytest.raises(PoolInUse):
        await rig.manager.pools.delete(pool)
    await rig.manager.terminate(first)
    await rig.manager.keep_pools_once()
    await rig.manager.wait_started(third, 5)
    assert third.status == S.running and len(rig.backend.containers) == 2


async def test_a_claim_of_a_starting_container_waits_for_it_or_is_cancelled(rig: Rig) -> None:
    rig.backend.start_delay = 0.2
    pool = await rig.manager.pools.create("default", _config(warm=2))
    await rig.manager.keep_pools_once()
    await _until(lambda: all(w.container_id for w in pool.warm), "warm containers created")
    rec = await rig.manager.pools.claim(pool, None)
    assert rec.status == S.pending
    await rig.manager.wait_started(rec, 5)
    assert rec.status == S.running and rig.backend.containers[rec.container_id].running  # type: ignore[index]
    cancelled = await rig.manager.pools.claim(pool, None)
    await rig.manager.terminate(cancelled)
    await rig.manager.wait_started(cancelled, 5)
    assert cancelled.status == S.terminated
    await _until(lambda: all(c.spec.sandbox_id != cancelled.id for c in rig.backend.containers.values()),
                 "the cancelled claim's container removed")


async def test_delete_and_update_remove_idle_containers(rig: Rig) -> None:
    pool = await _warm_pool(rig, warm=2)
    old = {w.container_id for w in pool.warm}
    await rig.manager.pools.update(pool, _config(warm=2, memory_mb=512))
    assert pool.warm == [] and not old & set(rig.backend.containers)  # recycled onto the new template
    await rig.manager.keep_pools_once()
    await _until(lambda: len(pool.warm) == 2 and all(w.ready for w in pool.warm), "recycled")
    assert all(rig.backend.containers[w.container_id].spec.memory_mb == 512 for w in pool.warm)  # type: ignore[index]
    await rig.manager.pools.delete(pool)
    assert rig.backend.containers == {}
    assert not any((rig.settings.data_dir / "run").iterdir())


async def test_restart_adopts_ready_warm_containers_and_drops_the_rest(rig: Rig) -> None:
    pool = await _warm_pool(rig, warm=2)
    kept = pool.warm[0]
    cut_off = pool.warm[1]
    cut_off.ready = False  # as if the emulator stopped before its agent answered
    await rig.store.save_pool(pool)
    await rig.manager.stop()
    second = rig.restart()
    await second.start(reap=False)
    [reloaded] = second.pools.list_pools("default")
    assert [w.sandbox_id for w in reloaded.warm] == [kept.sandbox_id]
    assert set(rig.backend.containers) == {kept.container_id}  # adopted, the other removed, none leaked
    rec = await second.pools.claim(reloaded, None)
    assert rec.status == S.running and rec.container_id == kept.container_id
    await second.stop()


async def test_a_pool_sandbox_suspends_at_its_timeout(rig: Rig) -> None:
    pool = await _warm_pool(rig, warm=1, timeout_secs=30)
    rec = await rig.manager.pools.claim(pool, None)
    await rig.manager.reap_once(now_ms() + 31_000)
    await _until(lambda: rec.status == S.suspended, "suspended at the timeout")
    assert rec.outcome is None
    await rig.manager.pools.delete(pool)  # a suspended sandbox does not hold the pool


async def test_a_failed_warm_start_leaks_nothing_and_backs_off(rig: Rig) -> None:
    rig.backend.fail_start = EmulatorError("engine said no")
    pool = await rig.manager.pools.create("default", _config(warm=1))
    await rig.manager.keep_pools_once()
    await _until(lambda: pool.warm == [], "failed entry dropped")
    assert rig.backend.containers == {} and pool.retry_after_ms > now_ms()
    await rig.manager.keep_pools_once()
    assert pool.warm == []  # holding off
    rec = await rig.manager.pools.claim(pool, None)  # no warm: a cold start, which fails with its reason
    await rig.manager.wait_started(rec, 5)
    assert rec.status == S.terminated and rec.pool_id == pool.id


async def test_concurrent_claims_never_share_a_warm_container(rig: Rig) -> None:
    pool = await _warm_pool(rig, warm=1)
    a, b = await asyncio.gather(rig.manager.pools.claim(pool, None), rig.manager.pools.claim(pool, None))
    await rig.manager.wait_started(a, 5)
    await rig.manager.wait_started(b, 5)
    assert a.id != b.id and a.container_id != b.container_id and a.status == b.status == S.running


async def test_the_warm_reserve_serves_plain_creates_only(rig: Rig, tmp_path) -> None:
    from emulator.config import Settings
    from tests.unit.conftest import _manager

    await rig.manager.stop()
    settings = Settings(data_dir=tmp_path / "data2", startup_timeout=1.0, warm_reserve=2)
    mgr = _manager(settings, rig.store, rig.backend, rig.agents, rig.mechanism)
    await mgr.start(reap=False)
    try:
        assert mgr.pools.list_pools("default") == []  # hidden from the API
        await mgr.keep_pools_once()
        await _until(lambda: sum(c.running for c in rig.backend.containers.values()) == 2, "reserve started")
        await asyncio.sleep(0.05)
        warm_ids = {c.spec.sandbox_id for c in rig.backend.containers.values()}
        rec = await mgr.create("default", SandboxSpec(cpus=0.5, memory_mb=256, name="fast"))
        # Running at once, in a reserve container, with its own limits applied in place and no pool.
        assert rec.status == S.running and rec.id in warm_ids and rec.pool_id is None
        spec = rig.backend.containers[rec.container_id].spec  # type: ignore[index]
        assert (spec.cpus, spec.memory_mb, LABEL_POOL in spec.labels) == (0.5, 256, False)
        for other in (SandboxSpec(entrypoint=["sleep", "1"]), SandboxSpec(session_label="elsewhere"),
                      SandboxSpec(network_policy={"allow_internet_access": False})):
            cold = await mgr.create("default", other)
            assert cold.status == S.pending and cold.id not in warm_ids  # a cold launch
            await mgr.wait_started(cold, 5)
        await mgr.keep_pools_once()
        await _until(lambda: len(mgr._ctx.pools.get("reserve-default").warm) == 2, "reserve refilled")  # type: ignore[union-attr]
    finally:
        await mgr.stop()

"""Sandbox pools (issue 12, PROTOCOL.md §6.8) with the pinned SDK against a real emulator and real containers:
CRUD sync and async, claims from warm containers (same container, refilled), max_containers (queued claim,
SandboxPending, started when room frees), PoolInUseError, deletion removing warm containers, the
timeout suspend of a pool sandbox, and warm containers adopted across a restart."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tensorlake.sandbox import (
    CLEAR_NETWORK_POLICY,
    AsyncSandbox,
    AsyncSandboxClient,
    NetworkConfig,
    PoolInUseError,
    PoolNotFoundError,
    Sandbox,
    SandboxClient,
)
from tensorlake.sandbox.exceptions import SandboxPending

from emulator.backend.base import LABEL_POOL
from emulator.server import instance_label
from sdk_shim.launcher import EmulatorProcess, free_port

T = 60.0
IMAGE = "tensorlake/ubuntu-minimal"  # the setup's alias of the default image, as the SDK's own tests use


@pytest.fixture
def client(emulator: EmulatorProcess) -> Iterator[SandboxClient]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pools live on the deprecated client only
        c = SandboxClient(api_url=emulator.api_url, request_timeout=T)
    yield c
    c.close()


def _until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"never: {what}")


def _pool_containers(pool_id: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL_POOL}={pool_id}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def _idle(client: SandboxClient, pool_id: str, n: int) -> list[Any]:
    return _until(lambda: [c for c in client.get_pool(pool_id).containers or [] if c.sandbox_id is None]
                  if len([c for c in client.get_pool(pool_id).containers or [] if c.sandbox_id is None]) >= n
                  else None, f"{n} idle containers in {pool_id}")


def test_pool_crud_sync(client: SandboxClient) -> None:
    closed = NetworkConfig(allow_internet_access=False)
    pool_id = client.create_pool(image=IMAGE, cpus=0.5, memory_mb=256, disk_mb=2048, entrypoint=["sleep", "300"],
                                 network=closed).pool_id
    try:
        info = client.get_pool(pool_id)
        assert (info.pool_id, info.image, info.resources.cpus, info.resources.memory_mb) == (pool_id, IMAGE, 0.5, 256)
        assert info.resources.disk_mb == 2048 and info.network_policy == closed and info.containers == []
        assert pool_id in [p.pool_id for p in client.list_pools()]
        updated = client.update_pool(pool_id, image=IMAGE, memory_mb=512, warm_containers=0)
        assert updated.resources.memory_mb == 512 and updated.network_policy == closed  # omitted: kept
        cleared = client.update_pool(pool_id, image=IMAGE, memory_mb=512, network=CLEAR_NETWORK_POLICY)
        assert cleared.network_policy is None
    finally:
        client.delete_pool(pool_id)
    for call in (client.get_pool, client.delete_pool, lambda p: client.update_pool(p, image=IMAGE)):
        with pytest.raises(PoolNotFoundError):
            call(pool_id)


def test_claims_warm_refill_max_and_in_use_sync(client: SandboxClient) -> None:
    pool_id = client.create_pool(image=IMAGE, memory_mb=256, warm_containers=1, max_containers=2).pool_id
    sandboxes: list[Sandbox] = []
    try:
        [warm] = _idle(client, pool_id, 1)
        first = Sandbox.create(pool_id=pool_id, request_timeout=T, api_url=client._api_url)
        sandboxes.append(first)
        info = first.info()
        assert info.status == "running" and info.pool_id == pool_id and info.resources.memory_mb == 256
        # The warm container became this sandbox: its hostname is the sandbox's id.
        assert first.run("hostname").stdout.strip() == first.sandbox_id
        claimed = [c for c in client.get_pool(pool_id).containers or [] if c.id == warm.id]
        assert claimed and claimed[0].sandbox_id == first.sandbox_id and claimed[0].state == "Running"
        with pytest.raises(PoolInUseError):
            client.delete_pool(pool_id)
        [spare] = _idle(client, pool_id, 1)
        assert spare.id != warm.id
        second = Sandbox.create(pool_id=pool_id, request_timeout=T, api_url=client._api_url)
        sandboxes.append(second)
        time.sleep(2)  # several reconciler passes: still no spare beyond max_containers=2
        containers = client.get_pool(pool_id).containers or []
        assert sorted(c.sandbox_id for c in containers) == sorted([first.sandbox_id, second.sandbox_id])
        assert len(_pool_containers(pool_id)) == 2
        # At max: the claim waits for room (pending, pool_at_capacity); the SDK gives up after its budget.
        with pytest.raises(SandboxPending) as queued:
            Sandbox.create(pool_id=pool_id, request_timeout=3, api_url=client._api_url)
        third_id = queued.value.sandbox_id
        assert client.get(third_id).pending_reason == "pool_at_capacity"
        first.terminate()
        _until(lambda: client.get(third_id).status == "running", "the queued claim starts once room frees")
        sandboxes.append(Sandbox.connect(third_id, request_timeout=T, api_url=client._api_url))
    finally:
        for sb in sandboxes:
            sb.terminate()
    client.delete_pool(pool_id)
    _until(lambda: _pool_containers(pool_id) == [], "the pool's containers removed")


def test_delete_pool_removes_warm_containers(client: SandboxClient) -> None:
    pool_id = client.create_pool(image=IMAGE, memory_mb=256, warm_containers=2).pool_id
    _idle(client, pool_id, 2)
    _until(lambda: len(_pool_containers(pool_id)) == 2, "two warm containers in Docker")
    client.delete_pool(pool_id)
    assert _pool_containers(pool_id) == []
    with pytest.raises(PoolNotFoundError):
        client.get_pool(pool_id)


async def test_pools_async(emulator: EmulatorProcess) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "AsyncSandboxClient is in preview"
        client = AsyncSandboxClient(api_url=emulator.api_url, request_timeout=T)
    pool_id = (await client.create_pool(image=IMAGE, memory_mb=256, warm_containers=1)).pool_id
    try:
        assert (await client.get_pool(pool_id)).warm_containers == 1
        assert pool_id in [p.pool_id for p in await client.list_pools()]
        sb = await AsyncSandbox.create(pool_id=pool_id, request_timeout=T, api_url=emulator.api_url)
        try:
            assert (await sb.status()) == "running"
            assert (await sb.run("echo", ["pooled"])).stdout.strip() == "pooled"
            with pytest.raises(PoolInUseError):
                await client.delete_pool(pool_id)
        finally:
            await sb.terminate()
        updated = await client.update_pool(pool_id, image=IMAGE, memory_mb=384, warm_containers=0)
        assert updated.resources.memory_mb == 384
    finally:
        await client.delete_pool(pool_id)
    with pytest.raises(PoolNotFoundError):
        await client.get_pool(pool_id)
    assert _pool_containers(pool_id) == []


def test_a_pool_sandbox_suspends_at_its_timeout(client: SandboxClient) -> None:
    pool_id = client.create_pool(image=IMAGE, memory_mb=256, warm_containers=1, timeout_secs=2).pool_id
    try:
        _idle(client, pool_id, 1)
        sb = Sandbox.create(pool_id=pool_id, request_timeout=T, api_url=client._api_url)
        _until(lambda: client.get(sb.sandbox_id).status == "suspended", "suspended at the timeout", 30)
        assert client.get(sb.sandbox_id).outcome is None
        client.delete_pool(pool_id)  # a suspended sandbox does not hold its pool
        pool_id = ""
        sb.terminate()
    finally:
        if pool_id:
            client.delete_pool(pool_id)


def _api(url: str, method: str = "GET") -> Any:
    out = subprocess.run(["curl", "-s", "-X", method, url], capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "null")


def test_warm_containers_are_adopted_across_a_restart() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tle-pool-restart-", dir="/tmp"))
    api_port, proxy_port = free_port(), free_port()
    base = f"http://localhost:{api_port}/v1/namespaces/default"
    keep = {"TLE_TERMINATE_ON_EXIT": "0"}
    first = EmulatorProcess(data_dir=data_dir, api_port=api_port, proxy_port=proxy_port, extra_env=keep).start()
    second = None
    try:
        pool_id = subprocess.run(
            ["curl", "-s", "-X", "POST", f"{base}/sandbox-pools", "-d",
             json.dumps({"image": IMAGE, "resources": {"memory_mb": 256, "ephemeral_disk_mb": 4096},
                         "warm_containers": 1})],
            capture_output=True, text=True, check=True)
        pool_id = json.loads(pool_id.stdout)["pool_id"]
        # The field name SDKs up to 0.5.113 send for disk_mb, served back under both names.
        resources = _api(f"{base}/sandbox-pools/{pool_id}")["resources"]
        assert resources["disk_mb"] == resources["ephemeral_disk_mb"] == 4096
        # Listed once its agent answered: only such a warm container is adopted by the next start-up.
        _until(lambda: len(_pool_containers(pool_id)) == 1 and _api(f"{base}/sandbox-pools/{pool_id}")["containers"],
               "warm container")
        before = _pool_containers(pool_id)
        first.stop()
        second = EmulatorProcess(data_dir=data_dir, api_port=api_port, proxy_port=proxy_port).start()
        assert _pool_containers(pool_id) == before  # adopted, not replaced, not leaked
        claim = _api(f"{base}/sandbox-pools/{pool_id}/sandboxes", "POST")
        assert claim["status"] == "running"
        assert _api(f"{base}/sandboxes/{claim['sandbox_id']}", "DELETE") is None
        assert _api(f"{base}/sandbox-pools/{pool_id}", "DELETE") is None
        _until(lambda: _pool_containers(pool_id) == [], "pool containers removed")
    finally:
        (second or first).stop()
        first.stop()
        label = f"dev.tensorlake-emulator.instance={instance_label(data_dir)}"
        assert subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True,
                              text=True).stdout.split() == []
        subprocess.run(["rm", "-rf", str(data_dir)], check=False)


def _instance_containers(emulator: EmulatorProcess) -> dict[str, dict[str, str]]:
    """sandbox id -> labels of the emulator's containers."""
    label = f"dev.tensorlake-emulator.instance={instance_label(emulator.data_dir)}"
    ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label={label}"], capture_output=True, text=True,
                         check=True).stdout.split()
    if not ids:
        return {}
    out = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout)
    return {c["Config"]["Labels"]["dev.tensorlake-emulator.sandbox-id"]: c for c in out}


def test_a_create_served_by_the_warm_reserve_looks_like_a_cold_one(emulator: EmulatorProcess) -> None:
    known = {s.sandbox_id for s in Sandbox.list(api_url=emulator.api_url)}
    _until(lambda: set(_instance_containers(emulator)) - known, "a warm reserve container (TLE_WARM_RESERVE)")
    time.sleep(1.0)  # its agent answers
    reserve = set(_instance_containers(emulator)) - known
    t0 = int(time.time() * 1000)
    warm = Sandbox.create(cpus=0.5, memory_mb=384, request_timeout=T)
    t1 = int(time.time() * 1000)
    # Internet off cannot be served by a warm container (its network is fixed): a cold create.
    cold = Sandbox.create(cpus=0.5, memory_mb=384, allow_internet_access=False, request_timeout=T)
    try:
        assert warm.sandbox_id in reserve and cold.sandbox_id not in reserve
        info = warm.info()
        assert t0 - 5 <= info.created_at.timestamp() * 1000 <= t1 + 5 and info.pool_id is None
        containers = _instance_containers(emulator)
        for sb in (warm, cold):
            c = containers[sb.sandbox_id]
            assert (c["HostConfig"]["NanoCpus"], c["HostConfig"]["Memory"]) == (500_000_000, 384 * 2**20)
            assert c["Config"]["Labels"].get("dev.tensorlake-emulator.session") == os.environ["TLE_SESSION_LABEL"]
            assert LABEL_POOL not in c["Config"]["Labels"]
            assert sb.run("hostname").stdout.strip() == sb.sandbox_id
        # the host name is the sandbox id; the process-tree marker is one token per started process
        own = ("HOSTNAME=", "TLE_PROCESS_TREE=")
        env = [sorted(ln for ln in sb.run("env").stdout.splitlines() if not ln.startswith(own)) for sb in (warm, cold)]
        assert env[0] == env[1]
        assert warm.run("ls", ["/tmp"]).stdout == cold.run("ls", ["/tmp"]).stdout
    finally:
        warm.terminate()
        cold.terminate()

"""Egress rules of gVisor sandboxes on gVisor's own network stack (runtime runsc-netstack), enforced on the host
(emulator/backend/egress_host.py, docs/gvisor.md): such sandboxes suspend, resume and restore into new ones with
their rules holding, take rules by `update`, and leave no chain behind. Real SDK, real emulator, real runsc; test
traffic goes only to the two test hosts (and their network's bridge address) of tests/test_egress.py's fixture,
on an internal Docker network made here. Runs in the gVisor pass only (TLE_TEST_RUNTIME=runsc).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from runtime_helpers import GVISOR
from tensorlake.sandbox import CLEAR_NETWORK_POLICY, CheckpointType, NetworkConfig, Sandbox
from tensorlake.sandbox.exceptions import RemoteAPIError
from test_egress import EgressNet, _docker, _expect, _probe, host_chain, testnet  # noqa: F401 (fixture)

from sdk_shim.launcher import EmulatorProcess

T = 60.0  # request_timeout of SDK calls
W = 60.0  # suspend / resume / checkpoint timeout

pytestmark = [pytest.mark.timeout(400),
              pytest.mark.skipif(not GVISOR, reason="the gVisor pass only (TLE_TEST_RUNTIME=runsc)")]

# One connect to argv[1]:argv[2]: prints "<errno or 0> <seconds>"
CONNECT = """
import socket, sys, time
s = socket.socket(); s.settimeout(8); t = time.monotonic()
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); r = 0
except OSError as e:
    r = e.errno
print(r, round(time.monotonic() - t, 3))
"""
EHOSTUNREACH = 113  # the sandbox got the host's ICMP "administratively prohibited"


def _runtime(sb: Sandbox) -> str:
    return _docker("inspect", "-f", "{{.HostConfig.Runtime}}", f"tle-{sb.sandbox_id}")


def _addresses(sb: Sandbox) -> set[str]:
    nets = json.loads(_docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", f"tle-{sb.sandbox_id}"))
    return {n["IPAddress"] for n in nets.values() if n.get("IPAddress")}


def _host_rules(family: str = "iptables") -> str:
    return subprocess.run([family, "-S"], capture_output=True, text=True, check=True).stdout


def _jump_sources(sandbox_id: str) -> set[str]:
    """The IPv4 sources the host's TLE-EGRESS chain sends to the sandbox's chain."""
    lines = [ln.split() for ln in _host_rules().splitlines() if f'"tle-egress sandbox {sandbox_id}"' in ln]
    return {ln[ln.index("-s") + 1].removesuffix("/32") for ln in lines if "-s" in ln}


def _no_chain_of(sandbox_id: str, chain: str) -> None:
    for family in ("iptables", "ip6tables"):
        table = _host_rules(family)
        assert sandbox_id not in table and chain not in table, f"{family} still has {sandbox_id}'s rules"


def _connect(sb: Sandbox, host: str, port: int = 8080) -> tuple[int, float]:
    res = sb.run("python3", ["-c", CONNECT, host, str(port)], timeout=30)
    errno, secs = res.stdout.split()
    return int(errno), float(secs)


def _gateway(net: EgressNet) -> str:
    return json.loads(_docker("network", "inspect", net.name))[0]["IPAM"]["Config"][0].get("Gateway", "")


def test_docker_rules_kept() -> None:
    """The shared chain is jumped to from DOCKER-USER first; Docker's own final RETURN stays last."""
    with_rules = [ln for ln in _host_rules().splitlines() if ln.startswith("-A DOCKER-USER")]
    if "-A DOCKER-USER -j TLE-EGRESS" in with_rules:
        assert with_rules[0] == "-A DOCKER-USER -j TLE-EGRESS"
    assert with_rules[-1] == "-A DOCKER-USER -j RETURN"


def test_rules_hold_across_suspend_resume_and_restore_into_new(emulator: EmulatorProcess,
                                                                testnet: EgressNet) -> None:  # noqa: F811
    sb = Sandbox.create(name=f"gve-{uuid.uuid4().hex[:8]}", memory_mb=256, deny_out=[testnet.a], request_timeout=T)
    try:
        assert _runtime(sb) == "runsc-netstack"  # rules no longer force host networking
        chain = host_chain(sb.sandbox_id)
        assert chain is not None and _jump_sources(sb.sandbox_id) == _addresses(sb)
        testnet.attach(sb.sandbox_id)
        for _ in range(2):  # the test network is inside after a resume; the rules follow the new addresses
            sb.suspend(timeout=W)
            assert sb.info().status == "suspended" and chain not in _host_rules()  # removed with its address
            sb.resume(timeout=W)
            assert _jump_sources(sb.sandbox_id) == _addresses(sb) and len(_addresses(sb)) == 2
            assert _probe(sb, testnet) == _expect(testnet, "blocked", "open")
        errno, secs = _connect(sb, testnet.a)
        assert errno == EHOSTUNREACH and secs < 2, (errno, secs)  # the host's REJECT answers at once
        snap = sb.checkpoint(timeout=W, checkpoint_type=CheckpointType.MEMORY)
        assert snap is not None and snap.snapshot_type == "memory"
        try:
            copy = Sandbox.create(snapshot_id=snap.snapshot_id, name=f"gvc-{uuid.uuid4().hex[:8]}", request_timeout=T)
            try:
                assert _runtime(copy) == "runsc-netstack"
                copy_chain = host_chain(copy.sandbox_id)
                assert copy_chain not in (None, chain) and _jump_sources(copy.sandbox_id) == _addresses(copy)
                testnet.attach(copy.sandbox_id)
                copy.suspend(timeout=W)
                copy.resume(timeout=W)
                assert _probe(copy, testnet) == _expect(testnet, "blocked", "open")
            finally:
                copy.terminate()
            _no_chain_of(copy.sandbox_id, str(copy_chain))
            assert _probe(sb, testnet) == _expect(testnet, "blocked", "open")  # the original keeps its own
        finally:
            Sandbox.delete_snapshot(snap.snapshot_id, api_url=emulator.api_url, request_timeout=T)
    finally:
        sb.terminate()
    _no_chain_of(sb.sandbox_id, str(chain))


def test_update_adds_rules_to_a_running_netstack_sandbox(emulator: EmulatorProcess,
                                                         testnet: EgressNet) -> None:  # noqa: F811
    sb = Sandbox.create(name=f"gvu-{uuid.uuid4().hex[:8]}", memory_mb=256, request_timeout=T)
    try:
        assert _runtime(sb) == "runsc-netstack" and host_chain(sb.sandbox_id) is None  # no rules, no chain
        testnet.attach(sb.sandbox_id)
        sb.suspend(timeout=W)
        sb.resume(timeout=W)
        assert _probe(sb, testnet) == _expect(testnet, "open", "open")
        sb.update(network=NetworkConfig(allow_out=[testnet.b]))  # running: in force at once
        assert _probe(sb, testnet) == _expect(testnet, "blocked", "open")
        sb.update(network=NetworkConfig(deny_out=[testnet.b]))
        assert _probe(sb, testnet) == _expect(testnet, "open", "blocked")
        sb.update(network=NetworkConfig(allow_internet_access=False))
        assert _probe(sb, testnet) == _expect(testnet, "blocked", "blocked")
        chain = host_chain(sb.sandbox_id)
        sb.update(network=CLEAR_NETWORK_POLICY)
        assert _probe(sb, testnet) == _expect(testnet, "open", "open")
        _no_chain_of(sb.sandbox_id, str(chain))  # an unrestricted policy needs no chain
        sb.update(network=NetworkConfig(allow_out=[testnet.a]))
        chain = host_chain(sb.sandbox_id)
        assert chain is not None
    finally:
        sb.terminate()
    _no_chain_of(sb.sandbox_id, str(chain))


def test_the_hosts_own_addresses_are_under_the_rules(emulator: EmulatorProcess,
                                                     testnet: EgressNet) -> None:  # noqa: F811
    """Traffic to the host itself (here: the test network's bridge address) goes through INPUT, not FORWARD:
    the sandbox's chain is jumped to from there too, as the namespace's OUTPUT chain covers it under runc."""
    gateway = _gateway(testnet)
    if not gateway or gateway not in subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout:
        pytest.skip("the internal test network's bridge has no address on this host")
    with Sandbox.create(name=f"gvh-{uuid.uuid4().hex[:8]}", memory_mb=256, allow_out=[testnet.a],
                        request_timeout=T) as sb:
        testnet.attach(sb.sandbox_id)
        sb.suspend(timeout=W)
        sb.resume(timeout=W)
        assert _connect(sb, gateway, 9)[0] == EHOSTUNREACH  # rejected by the rules, not refused by the host
        sb.update(network=CLEAR_NETWORK_POLICY)
        assert _connect(sb, gateway, 9)[0] != EHOSTUNREACH  # nothing listens there: refused (or dropped)


def test_without_host_rules_the_old_way(tmp_path: Path) -> None:
    """TLE_GVISOR_HOST_EGRESS=0 (what a host without br_netfilter gets): a sandbox with rules runs with host
    networking (rules in its namespace; runsc cannot checkpoint it), and one on gVisor's stack cannot take rules."""
    emu = EmulatorProcess(data_dir=tmp_path, extra_env={"TLE_GVISOR_HOST_EGRESS": "0",
                                                        "TLE_TERMINATE_ON_EXIT": "1"}).start()
    api = emu.api_url
    try:
        with Sandbox.create(name=f"gvo-{uuid.uuid4().hex[:8]}", memory_mb=256, deny_out=["192.0.2.1"],
                            request_timeout=T, api_url=api) as sb:
            assert _runtime(sb) == "runsc" and host_chain(sb.sandbox_id) is None
            with pytest.raises(RemoteAPIError) as err:
                sb.suspend(timeout=W)
            assert err.value.status_code == 400 and "hostinet" in str(err.value)
        with Sandbox.create(memory_mb=256, request_timeout=T, api_url=api) as sb:
            with pytest.raises(RemoteAPIError) as err:
                sb.update(network=NetworkConfig(deny_out=["192.0.2.1"]))
            assert err.value.status_code == 400 and "gVisor's own network stack" in str(err.value)
            assert sb.run("echo", ["still serving"]).stdout.strip() == "still serving"
    finally:
        emu.stop()

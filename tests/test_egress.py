"""Network egress (issue 15, part 2): allow_internet_access / allow_out / deny_out enforced in the
sandbox's network namespace (under gVisor's own network stack: on the host, emulator/backend/egress_host.py),
with the real SDK against a real emulator.

Test traffic goes ONLY to two server containers this module creates on an internal Docker network
(no route out) that it also creates; the sandbox's container is connected to that network. A
blocked destination is refused inside the sandbox's own namespace (an ICMP reject from its own
rules), so no packet of a blocked probe leaves it. Everything made here carries a per-run label
and is removed by that label at the end.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from runtime_helpers import GVISOR
from tensorlake.sandbox import CLEAR_NETWORK_POLICY, AsyncSandbox, NetworkConfig, Sandbox
from tensorlake.sandbox.exceptions import RemoteAPIError

from sdk_shim.launcher import EmulatorProcess, free_port

T = 60.0  # request_timeout of SDK calls
W = 60.0  # suspend / resume timeout
IMAGE = "tensorlake-emulator/sandbox:latest"
RUN = uuid.uuid4().hex[:10]
LABELS = ["--label", "dev.tensorlake-emulator.test=1", "--label", f"dev.tensorlake-emulator.test-run=egress-{RUN}"]

pytestmark = pytest.mark.timeout(400)

# Connects to port 8080 of each address given, prints {address: "open" | "blocked"} as JSON.
PROBE = """
import json, socket, sys
out = {}
for host in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
    s.settimeout(4)
    try:
        s.connect((host, 8080))
        s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
        out[host] = 'open' if s.recv(5) == b'HTTP/' else 'odd'
    except OSError as e:
        out[host] = 'blocked'
    finally:
        s.close()
print(json.dumps(out))
"""


def _docker(*args: str) -> str:
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"docker {' '.join(args)}: {res.stderr}"
    return res.stdout.strip()


@dataclass
class EgressNet:
    name: str
    subnet: str
    a: str  # server A's address on the internal network
    b: str  # server B's address

    def attach(self, sandbox_id: str) -> None:
        """Connect the sandbox's container to the internal network (its second interface)."""
        _docker("network", "connect", self.name, f"tle-{sandbox_id}")

    def attach_and_see(self, sb: Sandbox) -> None:
        """`attach`, then under gVisor a suspend and resume (of a named sandbox): gVisor's own network stack reads
        the namespace's interfaces when it starts or restores, so the network is inside after a resume
        (docs/gvisor.md); the resume also re-applies the rules for the container's new addresses."""
        self.attach(sb.sandbox_id)
        if GVISOR:
            sb.suspend(timeout=W)
            sb.resume(timeout=W)


def _wait_listening(container: str) -> None:
    check = "import socket; socket.create_connection(('127.0.0.1', 8080), 1).close()"
    deadline = time.monotonic() + 20
    while subprocess.run(["docker", "exec", container, "python3", "-c", check], capture_output=True).returncode:
        assert time.monotonic() < deadline, f"test server {container} did not listen"
        time.sleep(0.2)


def _cleanup() -> None:
    sel = f"label=dev.tensorlake-emulator.test-run=egress-{RUN}"
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", sel], capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    nets = subprocess.run(["docker", "network", "ls", "-q", "--filter", sel], capture_output=True, text=True)
    for net in nets.stdout.split():
        subprocess.run(["docker", "network", "rm", net], capture_output=True)


@pytest.fixture(scope="module")
def testnet() -> Iterator[EgressNet]:
    """An internal network (no route out) with two http.server containers, A and B, on port 8080."""
    name = f"tle-egress-test-{RUN}"
    try:
        _docker("network", "create", "--internal", *LABELS, name)
        subnet = json.loads(_docker("network", "inspect", name))[0]["IPAM"]["Config"][0]["Subnet"]
        addrs = []
        for srv in ("a", "b"):
            cname = f"{name}-{srv}"
            _docker("run", "-d", "--name", cname, "--network", name, *LABELS, "--cap-drop", "ALL",
                    "--memory", "128m", IMAGE, "python3", "-m", "http.server", "8080")
            _wait_listening(cname)
            addrs.append(_docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{name}").IPAddress}}}}',
                                 cname))
        yield EgressNet(name, subnet, addrs[0], addrs[1])
    finally:
        _cleanup()


def _probe(sb: Sandbox, net: EgressNet) -> dict[str, str]:
    res = sb.run("python3", ["-c", PROBE, net.a, net.b], timeout=30)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _expect(net: EgressNet, a: str, b: str) -> dict[str, str]:
    return {net.a: a, net.b: b}


def _on_host(sandbox_id: str) -> bool:
    return _docker("inspect", "-f", "{{.HostConfig.Runtime}}", f"tle-{sandbox_id}") == "runsc-netstack"


def host_chain(sandbox_id: str) -> str | None:
    """The host-side chain of a sandbox on gVisor's own network stack (found by its jumps' comment), or None."""
    table = subprocess.run(["iptables", "-S", "TLE-EGRESS"], capture_output=True, text=True).stdout
    jumps = [ln.split()[-1] for ln in table.splitlines() if f'"tle-egress sandbox {sandbox_id}"' in ln]
    return jumps[0] if jumps else None


def _rules(sandbox_id: str) -> str:
    """The sandbox's rules as `iptables -S` shows them, with "allowed" written ACCEPT both ways (the host-side
    chain RETURNs an allowed packet to Docker's own rules)."""
    if _on_host(sandbox_id):
        chain = host_chain(sandbox_id)
        if chain is None:
            return ""
        out = subprocess.run(["iptables", "-S", chain], capture_output=True, text=True, check=True).stdout
        return out.replace("-j RETURN", "-j ACCEPT")
    pid = _docker("inspect", "-f", "{{.State.Pid}}", f"tle-{sandbox_id}")
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "iptables", "-S", "OUTPUT"],
                          capture_output=True, text=True, check=True).stdout


# ---- at create -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, a, b", [
    ({}, "open", "open"),
    ({"allow_internet_access": False}, "blocked", "blocked"),
    ({"deny_out": ["{a}"]}, "blocked", "open"),
    ({"allow_out": ["{a}"]}, "open", "blocked"),
    ({"allow_out": ["{subnet}"], "deny_out": ["{a}/32"]}, "blocked", "open"),  # deny wins
    ({"allow_out": ["{a}", "{b}"], "deny_out": ["{b}"]}, "open", "blocked"),
    ({"allow_internet_access": False, "allow_out": ["{a}:8080"]}, "open", "blocked"),  # :port ignored
    ({"deny_out": ["{subnet}"]}, "blocked", "blocked"),
], ids=["default", "no-internet", "deny-one", "allow-one", "deny-beats-allow-cidr", "deny-beats-allow-ip",
        "no-internet-but-allowed", "deny-cidr"])
def test_policy_at_create(emulator: EmulatorProcess, testnet: EgressNet, kwargs: dict, a: str, b: str) -> None:
    fill = {"a": testnet.a, "b": testnet.b, "subnet": testnet.subnet}
    args = {k: ([e.format(**fill) for e in v] if isinstance(v, list) else v) for k, v in kwargs.items()}
    with Sandbox.create(name=f"eg-{uuid.uuid4().hex[:8]}", memory_mb=256, request_timeout=T, **args) as sb:
        testnet.attach_and_see(sb)
        assert _probe(sb, testnet) == _expect(testnet, a, b)


def test_dns_resolver_allowed_only_with_internet_access(emulator: EmulatorProcess, testnet: EgressNet) -> None:
    """With an allow list, the container's resolver gets port 53 when allow_internet_access is True
    and not when it is False (checked in the rule set: no DNS traffic is sent by this test)."""
    with Sandbox.create(memory_mb=256, request_timeout=T, allow_out=[testnet.a]) as sb:
        resolv = sb.run("cat", ["/etc/resolv.conf"]).stdout
        servers = [ln.split()[1] for ln in resolv.splitlines() if ln.startswith("nameserver")]
        assert servers
        rules = _rules(sb.sandbox_id)
        for server in servers:
            if ipaddress.ip_address(server).version == 4:
                assert f"-d {server}/32 -p udp -m udp --dport 53 -j ACCEPT" in rules, rules
        sb.update(network=NetworkConfig(allow_internet_access=False, allow_out=[testnet.a]))
        assert "--dport 53" not in _rules(sb.sandbox_id)
        sb.update(network=NetworkConfig(allow_out=[testnet.a], deny_out=servers))  # deny wins over DNS too
        rules = _rules(sb.sandbox_id)
        assert all(f"-d {s}/32 -j REJECT" in rules for s in servers if ":" not in s), rules


def test_entrypoint_starts_after_the_rules(emulator: EmulatorProcess, testnet: EgressNet) -> None:
    """The image's entrypoint is under the rules from its very first connect (EHOSTUNREACH from the
    sandbox's own REJECT rule, at once). The rules are applied within milliseconds of the start, so
    this rarely fails without the gate either; tests/agent checks the gate's ordering itself."""
    script = ("import socket, time; s = socket.socket(); s.settimeout(4)\n"
              f"try:\n    s.connect(({testnet.a!r}, 8080)); r = 'open'\nexcept OSError as e:\n    r = str(e.errno)\n"
              "open('/tmp/first.txt', 'w').write(r)\ntime.sleep(600)\n")
    with Sandbox.create(memory_mb=256, request_timeout=T, allow_internet_access=False,
                        entrypoint=["python3", "-c", script]) as sb:
        deadline = time.monotonic() + 15
        while (res := sb.run("cat", ["/tmp/first.txt"])).exit_code != 0:
            assert time.monotonic() < deadline, "the entrypoint did not run"
            time.sleep(0.2)
        assert res.stdout == "113", res.stdout  # EHOSTUNREACH: the REJECT rule was already there


def test_sandbox_cannot_change_its_rules(emulator: EmulatorProcess, testnet: EgressNet) -> None:
    """No process in the sandbox holds CAP_NET_ADMIN, nor can gain it (not in the bounding set)."""
    with Sandbox.create(memory_mb=256, request_timeout=T, allow_internet_access=False) as sb:
        status = sb.run("cat", ["/proc/self/status"]).stdout
        caps = {ln.split(":")[0]: int(ln.split()[1], 16) for ln in status.splitlines() if ln.startswith("Cap")}
        cap_net_admin = 1 << 12
        assert not caps["CapEff"] & cap_net_admin and not caps["CapBnd"] & cap_net_admin, caps
        # The kernel refuses a rule change from inside: setting a socket's mark needs CAP_NET_ADMIN too.
        res = sb.run("python3", ["-c", "import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, 36, 1)"])
        if not GVISOR:  # gVisor's kernel answers setsockopt itself; the host's rules stay (the probe below)
            assert res.exit_code != 0 and "Operation not permitted" in res.stderr
        testnet.attach(sb.sandbox_id)
        assert _probe(sb, testnet) == _expect(testnet, "blocked", "blocked")


# ---- update, suspend / resume, restart ---------------------------------------------------------------


def test_update_running_then_suspend_resume(emulator: EmulatorProcess, testnet: EgressNet) -> None:
    sb = Sandbox.create(name=f"egr-{RUN}", memory_mb=256, request_timeout=T)
    try:
        testnet.attach_and_see(sb)
        assert _probe(sb, testnet) == _expect(testnet, "open", "open")
        sb.update(network=NetworkConfig(allow_out=[testnet.b]))
        assert _probe(sb, testnet) == _expect(testnet, "blocked", "open")
        sb.update(network=NetworkConfig(allow_internet_access=False))
        assert _probe(sb, testnet) == _expect(testnet, "blocked", "blocked")
        sb.update(network=NetworkConfig(deny_out=[testnet.b]))
        assert _probe(sb, testnet) == _expect(testnet, "open", "blocked")
        info = sb.info()
        assert info.network_policy is not None and info.network_policy.deny_out == [testnet.b]
        # A CRIU restore makes a new network namespace: the rules must be back in it.
        sb.suspend(timeout=W)
        sb.resume(timeout=W)
        assert _probe(sb, testnet) == _expect(testnet, "open", "blocked")
        # Changed while suspended: recorded, in force after the resume.
        sb.suspend(timeout=W)
        sb.update(network=NetworkConfig(allow_out=[testnet.b]))
        sb.resume(timeout=W)
        assert _probe(sb, testnet) == _expect(testnet, "blocked", "open")
        sb.update(network=CLEAR_NETWORK_POLICY)
        assert _probe(sb, testnet) == _expect(testnet, "open", "open")
        assert sb.info().network_policy is None
    finally:
        sb.terminate()


def test_restored_copy_keeps_the_policy(emulator: EmulatorProcess, testnet: EgressNet) -> None:
    with Sandbox.create(memory_mb=256, request_timeout=T, deny_out=[testnet.a]) as sb:
        snap = sb.checkpoint(timeout=W)
        assert snap is not None
        try:
            with Sandbox.create(snapshot_id=snap.snapshot_id, name=f"egc-{uuid.uuid4().hex[:8]}",
                                request_timeout=T) as copy:
                testnet.attach_and_see(copy)
                assert _probe(copy, testnet) == _expect(testnet, "blocked", "open")
        finally:
            Sandbox.delete_snapshot(snap.snapshot_id, request_timeout=T)


def test_bad_update_keeps_the_previous_policy(emulator: EmulatorProcess, testnet: EgressNet) -> None:
    with Sandbox.create(name=f"egb-{uuid.uuid4().hex[:8]}", memory_mb=256, request_timeout=T,
                        allow_out=[testnet.a]) as sb:
        testnet.attach_and_see(sb)
        with pytest.raises(RemoteAPIError) as err:  # the SDK sends it; the server's validation refuses it
            sb.update(network=NetworkConfig(allow_out=["not a host!"]))
        assert err.value.status_code == 400
        assert _probe(sb, testnet) == _expect(testnet, "open", "blocked")
        assert sb.info().network_policy.allow_out == [testnet.a]


def test_async_create_and_update(emulator: EmulatorProcess, testnet: EgressNet) -> None:
    async def main() -> None:
        # "localhost" is a host name resolved from the host's /etc/hosts: no DNS query is sent.
        sb = await AsyncSandbox.create(name=f"ega-{uuid.uuid4().hex[:8]}", memory_mb=256, request_timeout=T,
                                       allow_out=["localhost", testnet.b])
        try:
            testnet.attach(sb.sandbox_id)
            if GVISOR:  # the attached network is inside gVisor's own stack after a resume (attach_and_see)
                await sb.suspend(timeout=W)
                await sb.resume(timeout=W)
            res = await sb.run("python3", ["-c", PROBE, testnet.a, testnet.b], timeout=30)
            assert json.loads(res.stdout) == _expect(testnet, "blocked", "open")
            await sb.update(network=NetworkConfig(deny_out=[testnet.b]))
            res = await sb.run("python3", ["-c", PROBE, testnet.a, testnet.b], timeout=30)
            assert json.loads(res.stdout) == _expect(testnet, "open", "blocked")
        finally:
            await sb.terminate()

    asyncio.run(main())


def test_rules_reapplied_after_emulator_restart(testnet: EgressNet) -> None:
    """A running sandbox whose namespace lost its rules while the emulator was down (simulated by
    flushing them from the host) has them again once the emulator is back."""
    data_dir = Path(tempfile.mkdtemp(prefix="tle-egress-", dir="/tmp"))
    api_port, proxy_port = free_port(), free_port()
    api = f"http://localhost:{api_port}"
    first = EmulatorProcess(data_dir=data_dir, api_port=api_port, proxy_port=proxy_port,
                            extra_env={"TLE_TERMINATE_ON_EXIT": "0"}).start()
    second = None
    try:
        sb = Sandbox.create(name=f"egr-rst-{RUN}", memory_mb=256, request_timeout=T, api_url=api,
                            deny_out=[testnet.a])
        testnet.attach_and_see(sb)
        assert _probe(sb, testnet) == _expect(testnet, "blocked", "open")
        first.stop()
        if _on_host(sb.sandbox_id):  # gVisor's own network stack: the rules are the host's chain
            subprocess.run(["iptables", "-F", host_chain(sb.sandbox_id) or "-"], check=True)
        else:
            pid = _docker("inspect", "-f", "{{.State.Pid}}", f"tle-{sb.sandbox_id}")
            subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "iptables", "-F", "OUTPUT"], check=True)
        assert "REJECT" not in _rules(sb.sandbox_id)
        second = EmulatorProcess(data_dir=data_dir, api_port=api_port, proxy_port=proxy_port,
                                 extra_env={"TLE_TERMINATE_ON_EXIT": "1"}).start()
        again = Sandbox.connect(sb.sandbox_id, request_timeout=T, api_url=api)
        assert _probe(again, testnet) == _expect(testnet, "blocked", "open")
        again.terminate()
    finally:
        (second or first).stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_host_without_iptables(tmp_path: Path) -> None:
    """Where iptables is missing: "no internet" still works (a container with no network at all, as
    before rules existed); a policy that needs rules, or a change of policy, is a clear 400."""
    path = ":".join(p for p in os.environ["PATH"].split(":") if not p.rstrip("/").endswith("sbin"))
    emu = EmulatorProcess(data_dir=tmp_path, extra_env={"PATH": path, "TLE_CHECKPOINT": "off",
                                                        "TLE_TERMINATE_ON_EXIT": "1"}).start()
    api = emu.api_url
    try:
        with Sandbox.create(allow_internet_access=False, memory_mb=256, request_timeout=T, api_url=api) as sb:
            assert "eth0" not in sb.run("cat", ["/proc/net/dev"]).stdout
            with pytest.raises(RemoteAPIError) as err:
                sb.update(network=NetworkConfig(allow_out=["10.0.0.1"]))
            assert err.value.status_code == 400 and "iptables" in str(err.value)
        with pytest.raises(RemoteAPIError) as err:
            Sandbox.create(deny_out=["10.0.0.1"], memory_mb=256, request_timeout=T, api_url=api)
        assert err.value.status_code == 400 and "iptables" in str(err.value)
    finally:
        emu.stop()

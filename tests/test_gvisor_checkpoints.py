"""gVisor's own checkpoint (emulator/checkpoints/gvisor.py): suspend/resume and memory snapshots restored into
new sandboxes, for gVisor sandboxes without internet access (runtime runsc-nonet) and with internet access on
gVisor's own network stack (runtime runsc-netstack; docs/gvisor.md). Real SDK, real emulator, real runsc, and a
test host on an internal Docker network made here; runs in the gVisor pass only (TLE_TEST_RUNTIME=runsc).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from runtime_helpers import GVISOR
from tensorlake.sandbox import CheckpointType, NetworkConfig, Sandbox
from tensorlake.sandbox.exceptions import RemoteAPIError

from sdk_shim.launcher import EmulatorProcess

T = 60.0  # request_timeout of creates and connects
W = 60.0  # timeout of suspend / resume / checkpoint

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not GVISOR, reason="the gVisor pass only (TLE_TEST_RUNTIME=runsc)")]

# Holds a token drawn once at start in memory and counts; each count also goes to a file, replaced whole
# (a plain rewrite can be caught truncated by a read, or by a snapshot, which keeps it so).
COUNTER = """
import os, time
token = os.urandom(8).hex()
i = 0
while True:
    i += 1
    with open('/srv/count.tmp', 'w') as f:
        f.write(f'{token} {i}')
    os.replace('/srv/count.tmp', '/srv/count.txt')
    time.sleep(0.05)
"""


def _read(sb: Sandbox) -> tuple[str, int]:
    token, n = sb.read_file("/srv/count.txt").value.decode().split()
    return token, int(n)


def _advanced(sb: Sandbox, token: str, past: int) -> int:
    """Waits until the counter with `token` (the same process, memory kept) is past `past`; returns it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = _read(sb)
        if got[0] == token and got[1] > past:
            return got[1]
        time.sleep(0.1)
    raise AssertionError(f"the counter {token} did not go on past {past}: {_read(sb)}")


def test_offline_gvisor_sandbox_suspends_and_restores_into_new(emulator: EmulatorProcess) -> None:
    sb = Sandbox.create(name=f"gvck-{uuid.uuid4().hex[:8]}", memory_mb=256, allow_internet_access=False,
                        request_timeout=T)
    try:
        assert sb.info().runtime == "runsc"
        sb.write_file("/srv/kept.txt", b"kept under gvisor")
        counter = sb.start_process("python3", ["-u", "-c", COUNTER])
        time.sleep(0.5)
        token, n = _read(sb)
        for _ in range(2):
            sb.suspend(timeout=W)
            assert sb.info().status == "suspended"
            sb.resume(timeout=W)
            n = _advanced(sb, token, n)  # the same process, its token kept in memory
        assert sb.get_process(counter.pid).status == "running"
        snap = sb.checkpoint(timeout=W, checkpoint_type=CheckpointType.MEMORY)
        assert snap is not None and snap.snapshot_type == "memory"
        at_snapshot = n
        with Sandbox.create(snapshot_id=snap.snapshot_id, request_timeout=T) as new:
            assert new.info().runtime == "runsc"
            assert new.read_file("/srv/kept.txt").value == b"kept under gvisor"
            _advanced(new, token, at_snapshot)
            assert new.get_process(counter.pid).status == "running"
            assert new.run("echo", ["alive"]).stdout.strip() == "alive"
        _advanced(sb, token, n)  # the original runs on after its snapshot
        Sandbox.delete_snapshot(snap.snapshot_id, api_url=emulator.api_url, request_timeout=T)
    finally:
        sb.terminate()


def test_offline_gvisor_sandbox_cannot_open_its_network(emulator: EmulatorProcess) -> None:
    with Sandbox.create(memory_mb=256, allow_internet_access=False, request_timeout=T) as sb:
        with pytest.raises(RemoteAPIError) as err:
            sb.update(network=NetworkConfig(allow_internet_access=True))
        assert err.value.status_code == 400 and "gVisor" in str(err.value)


# ---- with internet access: gVisor's own network stack (runsc-netstack) ----------------------------------------

RUN = uuid.uuid4().hex[:10]
LABELS = ["--label", "dev.tensorlake-emulator.test=1", "--label", f"dev.tensorlake-emulator.test-run=gvnet-{RUN}"]
IMAGE = "tensorlake-emulator/sandbox:latest"
# the test host: an echo server on 9000 (one line back per line) and an HTTP server on 8080
ECHO = """
import socketserver
class H(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
socketserver.ThreadingTCPServer(('0.0.0.0', 9000), H).serve_forever()
"""
# In the sandbox: one TCP connection to the echo server, a line every 0.1 s; /srv/conn.txt says how it goes.
CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 9000), timeout=5)
f = s.makefile('rwb')
i = 0
while True:
    i += 1
    try:
        f.write(b'%d\\n' % i); f.flush()
        ok = f.readline() == b'%d\\n' % i
        state = f'ok {i}' if ok else f'closed {i}'
    except OSError as e:
        state = f'error {i} {e.__class__.__name__}'
    with open('/srv/conn.txt', 'w') as out:
        out.write(state)
    if not state.startswith('ok'):
        break
    time.sleep(0.1)
"""
HTTP_PROBE = ("import urllib.request, sys; "
              "print(urllib.request.urlopen(f'http://{sys.argv[1]}:8080/', timeout=5).status)")
# The sandbox's own address towards `argv[1]` (a UDP connect sends nothing)
OWN_ADDRESS = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
               "s.connect((sys.argv[1], 9)); print(s.getsockname()[0])")
LISTENING = "import socket; [socket.create_connection(('127.0.0.1', p), 1).close() for p in (8080, 9000)]"


def _docker(*args: str) -> str:
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"docker {' '.join(args)}: {res.stderr}"
    return res.stdout.strip()


@pytest.fixture(scope="module")
def test_host() -> Iterator[tuple[str, str]]:
    """(network, address): an internal Docker network (no route out) with one test host on it."""
    name = f"tle-gvnet-test-{RUN}"
    try:
        _docker("network", "create", "--internal", *LABELS, name)
        _docker("run", "-d", "--name", f"{name}-host", "--network", name, *LABELS, "--cap-drop", "ALL", "--memory",
                "128m", IMAGE, "sh", "-c", f"python3 -m http.server 8080 & exec python3 -c \"{ECHO}\"")
        addr = _docker("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{name}").IPAddress}}}}', f"{name}-host")
        deadline = time.monotonic() + 20
        while subprocess.run(["docker", "exec", f"{name}-host", "python3", "-c", LISTENING],
                             capture_output=True).returncode:
            assert time.monotonic() < deadline, "the test host did not listen"
            time.sleep(0.2)
        yield name, addr
    finally:
        sel = f"label=dev.tensorlake-emulator.test-run=gvnet-{RUN}"
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", sel], capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        for net in subprocess.run(["docker", "network", "ls", "-q", "--filter", sel], capture_output=True,
                                  text=True).stdout.split():
            subprocess.run(["docker", "network", "rm", net], capture_output=True)


def _container(sb: Sandbox) -> dict:
    return json.loads(_docker("inspect", f"tle-{sb.sandbox_id}"))[0]


def _conn(sb: Sandbox) -> str:
    return sb.read_file("/srv/conn.txt").value.decode()


def test_networked_gvisor_sandbox_suspends_with_its_network(emulator: EmulatorProcess,
                                                            test_host: tuple[str, str]) -> None:
    net, host = test_host
    with Sandbox.create(name=f"gvnet-{uuid.uuid4().hex[:8]}", memory_mb=256, request_timeout=T) as sb:
        assert sb.info().runtime == "runsc"
        assert _container(sb)["HostConfig"]["Runtime"] == "runsc-netstack"
        sb.write_file("/srv/kept.txt", b"kept with a network")
        counter = sb.start_process("python3", ["-u", "-c", COUNTER])
        # gVisor's stack takes the namespace's interfaces when the sandbox starts (or restores): the test network,
        # attached now, is inside after the next resume
        _docker("network", "connect", net, f"tle-{sb.sandbox_id}")
        time.sleep(0.5)
        token, n = _read(sb)
        sb.suspend(timeout=W)
        assert sb.info().status == "suspended"
        sb.resume(timeout=W)
        n = _advanced(sb, token, n)
        assert sb.run("python3", ["-c", HTTP_PROBE, host], timeout=30).stdout.strip() == "200"
        # an open connection to the test host does not survive a dump: runsc resets it (--net-disconnect-ok)
        sb.start_process("python3", ["-u", "-c", CLIENT, host])
        deadline = time.monotonic() + 10
        while not sb.run("cat", ["/srv/conn.txt"]).stdout.startswith("ok"):
            assert time.monotonic() < deadline, "the client did not connect to the test host"
            time.sleep(0.1)
        sb.suspend(timeout=W)
        sb.resume(timeout=W)
        deadline = time.monotonic() + 10
        while _conn(sb).startswith("ok"):
            assert time.monotonic() < deadline, f"the connection went on after a resume: {_conn(sb)}"
            time.sleep(0.1)
        assert _conn(sb).split()[0] in ("error", "closed"), _conn(sb)
        # new connections work, memory and files are kept
        assert sb.run("python3", ["-c", HTTP_PROBE, host], timeout=30).stdout.strip() == "200"
        _advanced(sb, token, n)
        assert sb.get_process(counter.pid).status == "running"
        assert sb.read_file("/srv/kept.txt").value == b"kept with a network"


def test_networked_gvisor_memory_snapshot_restores_into_new(emulator: EmulatorProcess) -> None:
    with Sandbox.create(memory_mb=256, request_timeout=T) as sb:
        sb.write_file("/srv/kept.txt", b"kept in the snapshot")
        counter = sb.start_process("python3", ["-u", "-c", COUNTER])
        time.sleep(0.5)
        snap = sb.checkpoint(timeout=W)  # default type: memory, as for runc
        assert snap is not None and snap.snapshot_type == "memory"
        token, at_snapshot = _read(sb)
        try:
            with Sandbox.create(snapshot_id=snap.snapshot_id, request_timeout=T) as new:
                c = _container(new)
                assert new.info().runtime == "runsc" and c["HostConfig"]["Runtime"] == "runsc-netstack"
                _advanced(new, token, at_snapshot - 1)
                assert new.get_process(counter.pid).status == "running"
                assert new.read_file("/srv/kept.txt").value == b"kept in the snapshot"
                # its network is its own container's (a new address), not the original's
                bridge = c["NetworkSettings"]["Networks"]["bridge"]
                own = new.run("python3", ["-c", OWN_ADDRESS, bridge["Gateway"]], timeout=30).stdout.strip()
                old = _container(sb)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
                assert own == bridge["IPAddress"] != old
            _advanced(sb, token, at_snapshot)  # the original runs on after its snapshot
        finally:
            Sandbox.delete_snapshot(snap.snapshot_id, api_url=emulator.api_url, request_timeout=T)

"""gVisor's own checkpoint (emulator/checkpoints/gvisor.py): suspend/resume and memory snapshots restored into
new sandboxes, for gVisor sandboxes without internet access (runtime runsc-nonet; docs/gvisor.md). Real SDK,
real emulator, real runsc; runs in the gVisor pass only (TLE_TEST_RUNTIME=runsc).
"""

from __future__ import annotations

import time
import uuid

import pytest
from runtime_helpers import GVISOR
from tensorlake.sandbox import CheckpointType, NetworkConfig, Sandbox
from tensorlake.sandbox.exceptions import RemoteAPIError

from sdk_shim.launcher import EmulatorProcess

T = 60.0  # request_timeout of creates and connects
W = 60.0  # timeout of suspend / resume / checkpoint

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not GVISOR, reason="the gVisor pass only (TLE_TEST_RUNTIME=runsc)")]

# Holds a token drawn once at start in memory and counts; each line also goes to a file.
COUNTER = """
import os, time
token = os.urandom(8).hex()
i = 0
while True:
    i += 1
    with open('/srv/count.txt', 'w') as f:
        f.write(f'{token} {i}')
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

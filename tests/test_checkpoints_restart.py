"""Snapshots and suspended sandboxes across an emulator restart, a host without CRIU, and gVisor's
filesystem snapshots across a restart (split from tests/test_checkpoints.py; same helpers)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from checkpoint_helpers import (
    COUNTER,
    T,
    W,
    _assert_contiguous,
    _cleanup,
    _counter_lines,
    _http,
    _status,
    _uid,
    _wait_more,
)
from runtime_helpers import GVISOR
from tensorlake.sandbox import CheckpointType, Sandbox
from tensorlake.sandbox.exceptions import RemoteAPIError

from sdk_shim.launcher import EmulatorProcess, free_port

pytestmark = pytest.mark.timeout(300)


# ---- restart survival and hosts without CRIU ------------------------------------------------------


def test_snapshots_and_suspended_sandboxes_survive_a_restart() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tle-cp-restart-", dir="/tmp"))
    api_port, proxy_port = free_port(), free_port()
    api = f"http://localhost:{api_port}"
    first = EmulatorProcess(data_dir=data_dir, api_port=api_port, proxy_port=proxy_port,
                            extra_env={"TLE_TERMINATE_ON_EXIT": "0"}).start()
    second = None
    try:
        name = f"rst-{_uid()}"
        sb = Sandbox.create(name=name, memory_mb=256, request_timeout=T, api_url=api)
        p = sb.start_process("python3", ["-u", "-c", COUNTER])
        _wait_more(sb, p.pid, 3)
        snap = sb.checkpoint(timeout=W)
        assert snap is not None
        last = _counter_lines(sb, p.pid)[-1][1]
        sb.suspend(timeout=W)
        first.stop()
        second = EmulatorProcess(data_dir=data_dir, api_port=api_port, proxy_port=proxy_port).start()
        assert _status(api, name)["status"] == "suspended"
        assert Sandbox.get_snapshot(snap.snapshot_id, api_url=api).status in ("local_ready", "completed")
        again = Sandbox.connect(name, request_timeout=T, api_url=api)
        again.resume(timeout=W)
        vals = _wait_more(again, p.pid, last + 2)
        _assert_contiguous(vals)
        with Sandbox.create(snapshot_id=snap.snapshot_id, request_timeout=T, api_url=api) as restored:
            _assert_contiguous(_wait_more(restored, p.pid, 5))
        again.terminate()
        Sandbox.delete_snapshot(snap.snapshot_id, api_url=api, request_timeout=T)
    finally:
        (second or first).stop()
        first.stop()
        _cleanup(data_dir)


def test_without_criu_memory_is_refused_and_filesystem_works() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tle-cp-off-", dir="/tmp"))
    emu = EmulatorProcess(data_dir=data_dir, extra_env={"TLE_CHECKPOINT": "off"}).start()
    api = emu.api_url
    try:
        code, caps = _http("GET", f"{api}/emulator/capabilities")
        assert caps["checkpoints"]["criu"] is False  # type: ignore[index]
        assert "not supported on this host" in emu.log_tail(200).lower()
        sb = Sandbox.create(name=f"off-{_uid()}", memory_mb=256, request_timeout=T, api_url=api)
        try:
            with pytest.raises(RemoteAPIError) as err:
                sb.suspend(timeout=W)
            assert err.value.status_code == 400 and "not supported on this host" in str(err.value)
            with pytest.raises(RemoteAPIError) as err:
                sb.checkpoint(timeout=W, checkpoint_type=CheckpointType.MEMORY)
            assert err.value.status_code == 400 and "not supported on this host" in str(err.value)
            # gVisor keeps /tmp in a sandbox-private tmpfs that no snapshot sees (docs/gvisor.md)
            path = "/srv/f.txt" if GVISOR else "/tmp/f.txt"
            sb.write_file(path, b"cold")
            snap = sb.checkpoint(timeout=W)  # default type: filesystem where CRIU is missing
            assert snap is not None and snap.snapshot_type == "filesystem"
            with Sandbox.create(snapshot_id=snap.snapshot_id, request_timeout=T, api_url=api) as cold:
                assert cold.read_file(path).value == b"cold"
            Sandbox.delete_snapshot(snap.snapshot_id, api_url=api, request_timeout=T)
            assert sb.run("echo", ["fine"]).stdout.strip() == "fine"
        finally:
            sb.terminate()
    finally:
        emu.stop()
        _cleanup(data_dir)


# ---- gVisor (the gVisor pass of ./run test; docs/gvisor.md) ----------------------------------------


@pytest.mark.skipif(not GVISOR, reason="the gVisor pass only (TLE_TEST_RUNTIME=runsc)")
def test_gvisor_memory_dumps_name_the_cause_and_filesystem_snapshots_survive_a_restart() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tle-cp-gvisor-", dir="/tmp"))
    api_port, proxy_port = free_port(), free_port()
    api = f"http://localhost:{api_port}"
    # TLE_GVISOR_HOST_EGRESS=0: egress rules in the container's namespace, so host networking, which runsc cannot
    # checkpoint (docs/gvisor.md; what a host without br_netfilter does)
    first = EmulatorProcess(data_dir=data_dir, api_port=api_port, proxy_port=proxy_port,
                            extra_env={"TLE_TERMINATE_ON_EXIT": "0", "TLE_GVISOR_HOST_EGRESS": "0"}).start()
    second = None
    try:
        sb = Sandbox.create(name=f"gv-{_uid()}", memory_mb=256, request_timeout=T, api_url=api,
                            deny_out=["192.0.2.1"])
        assert sb.info().runtime == "runsc"
        for call in (lambda: sb.suspend(timeout=W),
                     lambda: sb.checkpoint(timeout=W, checkpoint_type=CheckpointType.MEMORY)):
            with pytest.raises(RemoteAPIError) as err:
                call()
            assert err.value.status_code == 400 and "gVisor" in str(err.value) and "hostinet" in str(err.value)
        sb.write_file("/srv/kept.txt", b"under gvisor")
        snap = sb.checkpoint(timeout=W)  # the default type of such a gVisor sandbox: filesystem
        assert snap is not None and snap.snapshot_type == "filesystem"
        # no rules: gVisor's own network stack, whose memory snapshot survives the restart too
        net = Sandbox.create(memory_mb=256, request_timeout=T, api_url=api)
        net.write_file("/srv/kept.txt", b"in memory")
        p = net.start_process("python3", ["-u", "-c", COUNTER])
        _wait_more(net, p.pid, 3)
        mem = net.checkpoint(timeout=W)
        assert mem is not None and mem.snapshot_type == "memory"
        first.stop()
        second = EmulatorProcess(data_dir=data_dir, api_port=api_port, proxy_port=proxy_port).start()
        with Sandbox.create(snapshot_id=snap.snapshot_id, request_timeout=T, api_url=api) as cold:
            assert cold.info().runtime == "runsc"  # a restore keeps the snapshot's runtime
            assert cold.read_file("/srv/kept.txt").value == b"under gvisor"
        with Sandbox.create(snapshot_id=mem.snapshot_id, request_timeout=T, api_url=api) as warm:
            assert warm.read_file("/srv/kept.txt").value == b"in memory"
            _assert_contiguous(_wait_more(warm, p.pid, 5))
        for s in (sb, net):
            Sandbox.connect(s.sandbox_id, request_timeout=T, api_url=api).terminate()
        for snap_id in (snap.snapshot_id, mem.snapshot_id):
            Sandbox.delete_snapshot(snap_id, api_url=api, request_timeout=T)
    finally:
        (second or first).stop()
        first.stop()
        _cleanup(data_dir)

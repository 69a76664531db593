"""Fault injection (issue 17): each fault seen through the real SDK's own exceptions and retries.

Every test scopes its faults to a namespace of its own, so the shared emulator's other sandboxes are
never hit.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from tensorlake.sandbox import CheckpointType, Sandbox, SandboxError, SandboxPending
from tensorlake.sandbox.exceptions import RemoteAPIError, SandboxException

from sdk_shim.control import ControlError, EmulatorControl, FaultInjector
from sdk_shim.launcher import EmulatorProcess

T = 60.0  # request_timeout of every SDK call
SMALL = {"cpus": 1.0, "memory_mb": 256, "request_timeout": T}


def _ns() -> str:
    return f"flt-{uuid.uuid4().hex[:8]}"


def _container_exists(sandbox_id: str) -> bool:
    return subprocess.run(["docker", "inspect", f"tle-{sandbox_id}"], capture_output=True).returncode == 0


@pytest.fixture
def ctl(emulator: EmulatorProcess):
    control = EmulatorControl(emulator.api_url)
    injector = FaultInjector(control)
    yield injector
    injector.clear()


def _record(ctl: FaultInjector, ns: str, sandbox_id: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{ctl.control.api_url}/v1/namespaces/{ns}/sandboxes/{sandbox_id}", timeout=10) as r:
        return json.loads(r.read())


def _wait_record(ctl: FaultInjector, ns: str, sandbox_id: str, status: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rec = _record(ctl, ns, sandbox_id)
        if rec["status"] == status or time.monotonic() > deadline:
            return rec
        time.sleep(0.2)


# ---- create ----------------------------------------------------------------------------------------


def test_create_pending_raises_sandbox_pending_and_runs_once_the_fault_goes(ctl: FaultInjector) -> None:
    ns = _ns()
    fault = ctl.inject("create_pending", namespace=ns, pending_reason="no_executors_available")
    with pytest.raises(SandboxPending) as err:
        Sandbox.create(namespace=ns, startup_timeout=3, **SMALL)
    assert err.value.pending_reason == "no_executors_available"
    sandbox_id = err.value.sandbox_id
    rec = _record(ctl, ns, sandbox_id)
    assert (rec["status"], rec["pending_reason"]) == ("pending", "no_executors_available")
    assert not _container_exists(sandbox_id)
    ctl.control.delete_fault(fault["id"], missing_ok=False)
    assert _wait_record(ctl, ns, sandbox_id, "running")["status"] == "running"
    sb = Sandbox.connect(sandbox_id, namespace=ns, request_timeout=T)
    assert sb.run("echo", ["up"]).stdout.strip() == "up"
    sb.terminate()


def test_create_pending_for_hold_secs_then_the_create_succeeds(ctl: FaultInjector) -> None:
    ns = _ns()
    ctl.inject("create_pending", namespace=ns, hold_secs=2, count=1)
    t0 = time.monotonic()
    sb = Sandbox.create(namespace=ns, startup_timeout=30, **SMALL)  # the SDK polls the pending sandbox
    assert time.monotonic() - t0 >= 2
    assert sb.status.value == "running"
    sb.terminate()


def test_create_fail_is_a_sandbox_error_with_the_reason_and_leaves_nothing(ctl: FaultInjector) -> None:
    ns = _ns()
    fault = ctl.inject("create_fail", namespace=ns, reason="ConfigurationError", message="bad entrypoint", count=1)
    with pytest.raises(SandboxError) as err:
        Sandbox.create(namespace=ns, **SMALL)
    assert err.value.reason == "ConfigurationError" and "bad entrypoint" in str(err.value)
    sandbox_id = err.value.sandbox_id
    assert sandbox_id and not _container_exists(sandbox_id)
    rec = _record(ctl, ns, sandbox_id)
    assert (rec["status"], rec["termination_reason"], rec["outcome"]) == (
        "terminated", "ConfigurationError", "Failure(ConfigurationError)")
    # count=1: used up, the next create runs
    assert fault["id"] not in [f["id"] for f in ctl.control.faults()]
    sb = Sandbox.create(namespace=ns, **SMALL)
    sb.terminate()


def test_no_capacity_ends_the_create_with_no_capacity(ctl: FaultInjector) -> None:
    ns = _ns()
    ctl.inject("no_capacity", namespace=ns)
    t0 = time.monotonic()
    with pytest.raises(SandboxError) as err:
        Sandbox.create(namespace=ns, max_pending_secs=2, **SMALL)
    assert err.value.reason == "no_capacity"
    assert time.monotonic() - t0 >= 1.5  # pending until max_pending_secs, as the cloud keeps it
    with pytest.raises(SandboxError) as err:
        Sandbox.create(namespace=ns, **SMALL)  # without the bound: at once
    assert err.value.reason == "no_capacity" and not _container_exists(err.value.sandbox_id or "")


# ---- the proxy -------------------------------------------------------------------------------------


def test_proxy_503_is_retried_by_the_sdk_and_502_on_run_is_not(ctl: FaultInjector) -> None:
    ns = _ns()
    sb = Sandbox.create(namespace=ns, **SMALL)
    try:
        ctl.inject("proxy_error", sandbox=sb.sandbox_id, status=503, count=2, path="/api/v1/files")
        sb.write_file("/tmp/x", b"hello")  # 503, 503, then the write
        log = ctl.control.requests(sandbox=sb.sandbox_id, port="proxy", path="/api/v1/files")
        assert [e["status"] for e in log] == [503, 503, 204] and {e["method"] for e in log} == {"PUT"}
        assert sb.read_file("/tmp/x").value == b"hello"

        fault = ctl.inject("proxy_error", sandbox=sb.sandbox_id, status=502, path="/api/v1/processes/run")
        with pytest.raises(RemoteAPIError) as err:
            sb.run("echo", ["hi"])
        assert err.value.status_code == 502
        assert len(ctl.control.requests(sandbox=sb.sandbox_id, path="/api/v1/processes/run")) == 1  # not retried
        ctl.control.delete_fault(fault["id"])
        assert sb.run("echo", ["hi"]).stdout.strip() == "hi"
    finally:
        sb.terminate()


def test_proxy_cut_ends_a_run_stream_mid_way(ctl: FaultInjector) -> None:
    ns = _ns()
    sb = Sandbox.create(namespace=ns, **SMALL)
    try:
        ctl.inject("proxy_cut", sandbox=sb.sandbox_id, after_bytes=60, count=1, path="/api/v1/processes/run")
        with pytest.raises(SandboxException):
            sb.run("sh", ["-c", "echo one; sleep 0.3; echo two; sleep 0.3; echo three"])
        assert sb.run("echo", ["ok"]).stdout.strip() == "ok"  # used up
    finally:
        sb.terminate()


# ---- suspend, resume, checkpoint -------------------------------------------------------------------


def test_suspend_and_resume_faults(ctl: FaultInjector) -> None:
    ns = _ns()
    sb = Sandbox.create(namespace=ns, name=f"s-{uuid.uuid4().hex[:6]}", **SMALL)
    try:
        ctl.inject("suspend_fail", namespace=ns, count=1, message="dump failed: no space left")
        with pytest.raises(RemoteAPIError) as err:
            sb.suspend(timeout=T)
        assert err.value.status_code == 409 and "no space left" in str(err.value)
        assert sb.status.value == "running"

        ctl.inject("suspend_slow", namespace=ns, count=1, delay_secs=2)
        t0 = time.monotonic()
        sb.suspend(timeout=T)
        assert time.monotonic() - t0 >= 2 and sb.status.value == "suspended"

        ctl.inject("resume_fail", namespace=ns, count=1)
        with pytest.raises(RemoteAPIError) as err:
            sb.resume(timeout=T)
        assert err.value.status_code == 409
        assert sb.status.value == "suspended"
        sb.resume(timeout=T)
        assert sb.run("echo", ["back"]).stdout.strip() == "back"
    finally:
        sb.terminate()


def test_checkpoint_fail_is_a_failed_snapshot(ctl: FaultInjector) -> None:
    ns = _ns()
    sb = Sandbox.create(namespace=ns, **SMALL)
    try:
        ctl.inject("checkpoint_fail", sandbox=sb.sandbox_id, count=1, message="snapshot store unavailable")
        with pytest.raises(SandboxError, match="snapshot store unavailable"):
            sb.checkpoint(timeout=T, checkpoint_type=CheckpointType.FILESYSTEM)
        assert sb.status.value == "running"
        assert sb.run("echo", ["still"]).stdout.strip() == "still"
    finally:
        sb.terminate()


# ---- OOM -------------------------------------------------------------------------------------------


def test_oom_kill_terminates_the_sandbox_as_the_oom_killer_does(ctl: FaultInjector) -> None:
    ns = _ns()
    sb = Sandbox.create(namespace=ns, **SMALL)
    other = Sandbox.create(namespace=_ns(), **SMALL)
    try:
        done = ctl.inject("oom_kill", sandbox=sb.sandbox_id)
        assert done["sandboxes"] == [sb.sandbox_id]
        rec = _record(ctl, ns, sb.sandbox_id)
        assert (rec["status"], rec["termination_reason"], rec["outcome"]) == (
            "terminated", "oom_killed", "Failure(oom_killed)")
        assert not _container_exists(sb.sandbox_id)
        with pytest.raises(RemoteAPIError) as err:
            sb.run("echo", ["x"])
        assert err.value.status_code == 404
        assert other.run("echo", ["fine"]).stdout.strip() == "fine"
    finally:
        other.terminate()


# ---- the HTTP API ----------------------------------------------------------------------------------


def test_fault_api_validation_listing_and_reset(ctl: FaultInjector) -> None:
    control = ctl.control
    with pytest.raises(ControlError) as err:
        control.inject_fault("meteor_strike", namespace="x")
    assert err.value.status == 400 and "kind" in err.value.message
    with pytest.raises(ControlError) as err:
        control.inject_fault("proxy_error", namespace="x", status=418)
    assert err.value.status == 400
    with pytest.raises(ControlError) as err:
        control.inject_fault("oom_kill")  # no scope: refused, not everything killed
    assert err.value.status == 400
    with pytest.raises(ControlError) as err:
        control.delete_fault("flt_nope", missing_ok=False)
    assert err.value.status == 404
    ns = _ns()
    made = ctl.inject("suspend_slow", namespace=ns, delay_secs=1)
    listed = {f["id"]: f for f in control.faults()}
    assert listed[made["id"]]["kind"] == "suspend_slow" and listed[made["id"]]["fired"] == 0
    report = control.reset(namespace=ns)
    assert report["faults"] == [made["id"]] and made["id"] not in {f["id"] for f in control.faults()}

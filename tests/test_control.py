"""Test controls (issue 17): reset and clock control, with the real SDK against real emulators.

The clock tests run their own emulator: its clock is process-wide, and advancing the shared one
would fire the deadlines of other modules' sandboxes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tensorlake.sandbox import CheckpointType, Sandbox

from emulator.backend.base import LABEL_POOL
from sdk_shim import control
from sdk_shim.launcher import EmulatorProcess

T = 60.0  # request_timeout of every SDK call


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _http(method: str, url: str, body: object = None, headers: dict[str, str] | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _container_exists(sandbox_id: str) -> bool:
    return subprocess.run(["docker", "inspect", f"tle-{sandbox_id}"], capture_output=True).returncode == 0


def _status(api_url: str, ns: str, ident: str) -> dict:
    code, body = _http("GET", f"{api_url}/v1/namespaces/{ns}/sandboxes/{ident}")
    assert code == 200, body
    return body


def _wait_status(api_url: str, ns: str, ident: str, wanted: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = _status(api_url, ns, ident)
        if body["status"] == wanted or time.monotonic() > deadline:
            return body
        time.sleep(0.25)


# ---- reset ---------------------------------------------------------------------------------------


def test_reset_namespace_removes_its_sandboxes_and_snapshots_only(emulator: EmulatorProcess) -> None:
    url = emulator.api_url
    ns, other = f"ctl-{_uid()}", f"ctl-{_uid()}"
    a = Sandbox.create(namespace=ns, cpus=1.0, memory_mb=256, request_timeout=T)
    b = Sandbox.create(namespace=ns, name=f"b-{_uid()}", cpus=1.0, memory_mb=256, request_timeout=T)
    keep = Sandbox.create(namespace=other, cpus=1.0, memory_mb=256, request_timeout=T)
    try:
        snap = a.checkpoint(timeout=T, checkpoint_type=CheckpointType.FILESYSTEM)
        assert snap is not None
        a.terminate()  # a terminated record goes too
        code, report = _http("POST", f"{url}/emulator/reset?namespace={ns}")
        assert code == 200, report
        assert sorted(report["sandboxes"]) == sorted([a.sandbox_id, b.sandbox_id])
        assert report["terminated"] == [b.sandbox_id]
        assert report["snapshots"] == [snap.snapshot_id] and report["errors"] == []
        assert report["seconds"] < 30
        assert list(Sandbox.list(namespace=ns, request_timeout=T)) == []
        assert _http("GET", f"{url}/v1/namespaces/{ns}/snapshots/{snap.snapshot_id}")[0] == 404
        assert _http("GET", f"{url}/v1/namespaces/{ns}/sandboxes/{b.sandbox_id}")[0] == 404
        assert not _container_exists(a.sandbox_id) and not _container_exists(b.sandbox_id)
        image = f"tensorlake-emulator/snapshot:{snap.snapshot_id.replace('_', '-')}"
        assert subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0
        # The other namespace is untouched and still works.
        assert keep.run("echo", ["still here"]).stdout.strip() == "still here"
        # A second reset finds nothing.
        code, again = _http("POST", f"{url}/emulator/reset?namespace={ns}")
        assert code == 200 and again["sandboxes"] == again["snapshots"] == []
    finally:
        keep.terminate()
        _http("POST", f"{url}/emulator/reset?namespace={other}")


def test_reset_session_ends_pending_and_running_sandboxes_of_that_session(emulator: EmulatorProcess) -> None:
    url = emulator.api_url
    label = f"ctl-session-{_uid()}"
    ns = f"ctl-{_uid()}"
    headers = {"x-tle-session": label}
    code, running = _http("POST", f"{url}/v1/namespaces/{ns}/sandboxes", {"resources": {"cpus": 1.0}}, headers)
    assert code == 200, running
    assert _wait_status(url, ns, running["sandbox_id"], "running")["status"] == "running"
    # wait=false answers at once, with the sandbox still pending (a legacy create waits until it runs)
    code, pending = _http("POST", f"{url}/v1/namespaces/{ns}/sandboxes", {"wait": False}, headers)
    assert code == 202 and pending["status"] == "pending"
    outsider = Sandbox.create(namespace=ns, cpus=1.0, memory_mb=256, request_timeout=T)  # the suite's own session
    try:
        t0 = time.monotonic()
        code, report = _http("POST", f"{url}/emulator/reset?session={label}")
        elapsed = time.monotonic() - t0
        assert code == 200, report
        assert sorted(report["terminated"]) == sorted([running["sandbox_id"], pending["sandbox_id"]])
        assert sorted(report["sandboxes"]) == sorted(report["terminated"])
        print(f"reset of 2 sandboxes (1 running, 1 pending) took {elapsed:.2f}s")
        assert [s.sandbox_id for s in Sandbox.list(namespace=ns, request_timeout=T)] == [outsider.sandbox_id]
        for _ in range(40):  # a launch cut off by the reset removes its container as it stops
            if not (_container_exists(running["sandbox_id"]) or _container_exists(pending["sandbox_id"])):
                break
            time.sleep(0.25)
        assert not _container_exists(running["sandbox_id"]) and not _container_exists(pending["sandbox_id"])
    finally:
        outsider.terminate()
        _http("POST", f"{url}/emulator/reset?namespace={ns}")


def test_reset_removes_the_namespace_pools_with_their_warm_and_claimed_sandboxes(emulator: EmulatorProcess) -> None:
    url, ns = emulator.api_url, f"ctl-{_uid()}"
    base = f"{url}/v1/namespaces/{ns}"
    code, made = _http("POST", f"{base}/sandbox-pools", {"image": "tensorlake/ubuntu-minimal", "warm_containers": 1,
                                                         "resources": {"cpus": 1.0, "memory_mb": 256}})
    assert code in (200, 201), made
    pool_id = made["pool_id"]
    claimed = Sandbox.create(namespace=ns, pool_id=pool_id, request_timeout=T)
    deadline = time.monotonic() + 30
    while len(_pool_containers(pool_id)) < 2 and time.monotonic() < deadline:  # the claimed one and a refill
        time.sleep(0.25)
    report = control.reset(namespace=ns, api_url=url)
    assert report["pools"] == [pool_id] and report["terminated"] == [claimed.sandbox_id], report
    assert report["errors"] == []
    assert _http("GET", f"{base}/sandbox-pools/{pool_id}")[0] == 404
    assert _pool_containers(pool_id) == []


def _pool_containers(pool_id: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL_POOL}={pool_id}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_reset_needs_a_scope(emulator: EmulatorProcess) -> None:
    code, body = _http("POST", f"{emulator.api_url}/emulator/reset")
    assert code == 400 and body["code"] == "BAD_REQUEST" and "namespace" in body["error"]
    code, body = _http("POST", f"{emulator.api_url}/emulator/reset?namespace=..bad")
    assert code == 400 and body["code"] == "BAD_REQUEST"
    # The same through the Python helpers (sdk_shim/control.py).
    with pytest.raises(control.ControlError) as err:
        control.reset(namespace="..bad", api_url=emulator.api_url)
    assert err.value.status == 400 and err.value.code == "BAD_REQUEST"
    empty = control.reset(namespace=f"ctl-{_uid()}", api_url=emulator.api_url)
    assert empty["sandboxes"] == empty["snapshots"] == empty["errors"] == []


# ---- clock ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_emulator() -> Iterator[EmulatorProcess]:
    data_dir = Path(tempfile.mkdtemp(prefix="tle-clock-", dir="/tmp"))
    proc = EmulatorProcess(data_dir=data_dir).start()
    yield proc
    proc.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


def test_advancing_the_clock_fires_timeouts_now(own_emulator: EmulatorProcess) -> None:
    url = own_emulator.api_url
    kw = {"api_url": url, "request_timeout": T, "cpus": 1.0, "memory_mb": 256}
    plain = Sandbox.create(timeout_secs=600, **kw)
    named = Sandbox.create(timeout_secs=600, name=f"n-{_uid()}", **kw)
    forever = Sandbox.create(**kw)
    try:
        code, before = _http("GET", f"{url}/emulator/clock")
        assert code == 200 and before["offset_secs"] == 0
        code, report = _http("POST", f"{url}/emulator/clock/advance", {"seconds": 300})
        assert code == 200 and report["fired"] == [] and report["offset_secs"] == 300
        assert report["now_ms"] - report["wall_ms"] == 300_000
        code, report = _http("POST", f"{url}/emulator/clock/advance", {"seconds": 301})
        assert code == 200, report
        fired = {f["sandbox_id"]: f["action"] for f in report["fired"]}
        caps = _http("GET", f"{url}/emulator/capabilities")[1]
        named_action = "suspend" if caps["checkpoints"]["memory_snapshots"] else "terminate"
        assert fired == {plain.sandbox_id: "terminate", named.sandbox_id: named_action}
        info = _status(url, "default", plain.sandbox_id)
        assert info["status"] == "terminated" and info["termination_reason"] == "timeout"
        assert not _container_exists(plain.sandbox_id)
        assert _wait_status(url, "default", named.sandbox_id, "suspended")["status"] == (
            "suspended" if named_action == "suspend" else "terminated")
        assert forever.run("echo", ["alive"]).stdout.strip() == "alive"
        # A sandbox created after the advance gets a deadline on the advanced clock: not due yet.
        late = Sandbox.create(timeout_secs=600, **kw)
        time.sleep(1.5)  # a pass of the background reaper
        assert _status(url, "default", late.sandbox_id)["status"] == "running"
        assert late.run("echo", ["ok"]).stdout.strip() == "ok"
        code, report = _http("POST", f"{url}/emulator/clock/advance", {"seconds": 601})
        assert [f["sandbox_id"] for f in report["fired"]] == [late.sandbox_id]
    finally:
        for sb in (plain, named, forever):
            sb.terminate()


def test_clock_advance_refuses_bad_values(own_emulator: EmulatorProcess) -> None:
    url = own_emulator.api_url
    for body in ({"seconds": 0}, {"seconds": -5}, {"seconds": "10"}, {}, {"seconds": 1e300}):
        code, answer = _http("POST", f"{url}/emulator/clock/advance", body)
        assert code == 400 and answer["code"] == "BAD_REQUEST", (body, answer)


def test_the_advanced_clock_survives_a_restart(own_emulator: EmulatorProcess) -> None:
    url = own_emulator.api_url
    code, report = _http("POST", f"{url}/emulator/clock/advance", {"seconds": 10.5})
    assert code == 200
    offset = report["offset_secs"]
    # An open request-log stream does not hold the emulator up when it stops.
    stream = urllib.request.urlopen(f"{url}/emulator/requests/stream", timeout=30)
    assert stream.readline() == b": connected\n"
    t0 = time.monotonic()
    assert own_emulator.stop() == 0
    assert time.monotonic() - t0 < 15
    stream.close()
    own_emulator.start()
    assert _http("GET", f"{own_emulator.api_url}/emulator/clock")[1]["offset_secs"] == offset

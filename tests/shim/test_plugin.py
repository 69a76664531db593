"""The pytest plugin, used the way a user would: a generated test file run by pytest in a subprocess."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

from shimhelpers import Inner, kill_tree, pid_gone, session_leftovers, wait_for

from sdk_shim.launcher import EmulatorProcess

COMMON = '''
import json, os, subprocess, time
from pathlib import Path

OUT = Path(os.environ["SHIM_OUT"])


def write(name, **data):
    (OUT / name).write_text(json.dumps(data))


def labelled(label, kind="ps"):
    import docker

    client = docker.from_env()
    filters = {"label": [f"dev.tensorlake-emulator.session={label}"]}
    if kind == "ps":
        return [c.id for c in client.containers.list(sparse=True, filters=filters)]
    return [i["Id"] for i in client.api.images(filters=filters)]
'''

FIXTURES_TEST = COMMON + '''
import pytest
from tensorlake.sandbox import CheckpointType, Sandbox


def test_sync_sandbox(tensorlake_sandbox, tensorlake_emulator):
    emu = tensorlake_emulator
    result = tensorlake_sandbox.run("echo", ["hello"])
    assert result.exit_code == 0 and result.stdout.strip() == "hello"
    assert emu.mode == "started" and emu.process is not None
    assert labelled(emu.session_label), "the sandbox container carries the session label"
    snap = tensorlake_sandbox.checkpoint(checkpoint_type=CheckpointType.FILESYSTEM, timeout=120)
    assert labelled(emu.session_label, "images"), "the snapshot image carries the session label"
    write("sync.json", label=emu.session_label, sandbox=tensorlake_sandbox.sandbox_id, snapshot=snap.snapshot_id,
          data_dir=str(emu.data_dir), pid=emu.process.pid)


def test_env_aims_the_sdk_at_the_session_emulator(tensorlake_emulator):
    # Code under test that gives the SDK no api_url still reaches the session's emulator.
    assert os.environ["TENSORLAKE_API_URL"] == tensorlake_emulator.api_url
    sandbox = Sandbox.create(request_timeout=60)
    assert sandbox.run("true").exit_code == 0
    write("leaked.json", sandbox=sandbox.sandbox_id)  # never terminated: the session must clean it up


@pytest.mark.tensorlake_sandbox(cpus=0.5, memory_mb=512)
def test_marker_passes_create_arguments(tensorlake_sandbox, tensorlake_emulator):
    import urllib.request

    url = f"{tensorlake_emulator.api_url}/v1/namespaces/default/sandboxes/{tensorlake_sandbox.sandbox_id}"
    with urllib.request.urlopen(url, timeout=10) as r:
        resources = json.load(r)["resources"]
    assert resources["cpus"] == 0.5 and resources["memory_mb"] == 512


async def test_async_sandbox(async_tensorlake_sandbox, tensorlake_emulator):
    result = await async_tensorlake_sandbox.run("echo", ["async"])
    assert result.stdout.strip() == "async"
    write("async.json", sandbox=async_tensorlake_sandbox.sandbox_id)
'''


def test_fixtures_create_label_and_clean_up_everything(inner: Inner) -> None:
    inner.write(FIXTURES_TEST)
    res = inner.run()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 passed" in res.stdout, res.stdout
    sync = json.loads((inner.out / "sync.json").read_text())
    # After the session: no container, no snapshot image, no data folder, no emulator, no record.
    assert session_leftovers(sync["label"]) == ([], [])
    assert not Path(sync["data_dir"]).exists()
    assert pid_gone(sync["pid"])
    assert inner.records() == []
    assert list(inner.tmp.iterdir()) == []


INERT_TEST = '''
import os


def test_nothing_started():
    assert os.environ["TENSORLAKE_API_URL"] == "http://localhost:1"  # a URL the user chose is left alone
'''


def test_plugin_is_inert_without_its_fixtures(inner: Inner) -> None:
    inner.write(INERT_TEST)
    inner.extra_env["TENSORLAKE_API_URL"] = "http://localhost:1"
    res = inner.run()
    assert res.returncode == 0, res.stdout + res.stderr
    assert not inner.sessions.exists(), "no session was opened"
    assert list(inner.tmp.iterdir()) == [], "no data folder was made"
    # ... while the plugin is loaded all the same (through its entry point).
    res = inner.run("--help")
    assert "--tensorlake-emulator-url" in res.stdout


XDIST_TEST = COMMON + '''
import pytest


@pytest.mark.parametrize("n", range(4))
def test_worker(tensorlake_sandbox, tensorlake_emulator, n):
    assert tensorlake_sandbox.run("echo", [str(n)]).stdout.strip() == str(n)
    assert os.environ["TENSORLAKE_API_URL"] == tensorlake_emulator.api_url
    write(f"w{n}.json", worker=os.environ["PYTEST_XDIST_WORKER"], label=tensorlake_emulator.session_label,
          api_url=tensorlake_emulator.api_url, data_dir=str(tensorlake_emulator.data_dir),
          sandbox=tensorlake_sandbox.sandbox_id)
    time.sleep(1)  # keep both workers busy at once
'''


def test_xdist_workers_get_their_own_emulator_and_label(inner: Inner) -> None:
    inner.write(XDIST_TEST)
    res = inner.run("-p", "xdist", "-n", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 passed" in res.stdout, res.stdout
    rows = [json.loads(p.read_text()) for p in sorted(inner.out.glob("w*.json"))]
    assert len(rows) == 4
    by_worker: dict[str, set[tuple[str, str, str]]] = {}
    for r in rows:
        by_worker.setdefault(r["worker"], set()).add((r["label"], r["api_url"], r["data_dir"]))
    assert len(by_worker) == 2, by_worker
    per_worker = [next(iter(v)) for v in by_worker.values()]
    assert all(len(v) == 1 for v in by_worker.values()), "one emulator per worker for the whole session"
    for i in range(3):
        assert per_worker[0][i] != per_worker[1][i], "workers share no label, port or data folder"
    assert len({r["sandbox"] for r in rows}) == 4
    for label, _, data_dir in per_worker:
        assert session_leftovers(label) == ([], [])
        assert not Path(data_dir).exists()
    assert inner.records() == []


HANG_TEST = COMMON + '''
from tensorlake.sandbox import CheckpointType


def test_hang(tensorlake_sandbox, tensorlake_emulator):
    emu = tensorlake_emulator
    snap = None
    if os.environ.get("SHIM_SNAPSHOT"):
        snap = tensorlake_sandbox.checkpoint(checkpoint_type=CheckpointType.FILESYSTEM, timeout=120).snapshot_id
    write("hang.json", label=emu.session_label, sandbox=tensorlake_sandbox.sandbox_id, snapshot=snap,
          mode=emu.mode, pid=emu.process.pid if emu.process else None,
          data_dir=str(emu.data_dir) if emu.data_dir else None)
    time.sleep(600)
'''

NOOP_TEST = '''
def test_next_session(tensorlake_emulator):
    assert tensorlake_emulator.session_label
'''


def _start_and_wait(inner: Inner) -> tuple[object, dict]:
    inner.write(HANG_TEST)
    proc = inner.popen()
    marker = inner.out / "hang.json"
    try:
        wait_for(lambda: marker.exists() or proc.poll() is not None, 200, "the inner test to create its sandbox")
    except AssertionError:
        kill_tree(proc)
        raise
    assert marker.exists(), (inner.root / "inner.log").read_text()
    return proc, json.loads(marker.read_text())


def _next_session_reaps(inner: Inner, info: dict) -> None:
    (inner.root / "test_inner.py").unlink()
    inner.write(NOOP_TEST, "test_next.py")
    res = inner.run()
    assert res.returncode == 0, res.stdout + res.stderr
    assert session_leftovers(info["label"]) == ([], [])
    assert inner.records() == []
    if info["data_dir"]:
        assert not Path(info["data_dir"]).exists()


def test_killed_session_is_reaped_by_the_next_one(inner: Inner) -> None:
    inner.extra_env["SHIM_SNAPSHOT"] = "1"
    proc, info = _start_and_wait(inner)
    # Everything dies at once (OOM killer, a cancelled CI job): the emulator first, then pytest.
    import os

    os.kill(info["pid"], signal.SIGKILL)
    kill_tree(proc)
    wait_for(lambda: pid_gone(info["pid"]), 30, "the emulator to die")
    containers, images = session_leftovers(info["label"])
    assert containers and images, "the killed session left its sandbox and snapshot behind"
    assert len(inner.records()) == 1
    _next_session_reaps(inner, info)


def test_killed_pytest_stops_its_emulator(inner: Inner) -> None:
    proc, info = _start_and_wait(inner)
    proc.kill()  # pytest alone is killed; its emulator is told by the kernel (parent-death signal)
    proc.wait(30)
    wait_for(lambda: pid_gone(info["pid"]), 90, "the orphaned emulator to stop")
    wait_for(lambda: session_leftovers(info["label"])[0] == [], 60, "the emulator to terminate its sandbox")
    _next_session_reaps(inner, info)


REUSE_TEST = COMMON + '''
from tensorlake.sandbox import CheckpointType, Sandbox


def test_reuse(tensorlake_sandbox, tensorlake_emulator):
    emu = tensorlake_emulator
    assert emu.mode == "reused" and emu.process is None
    assert emu.target_url == os.environ["TLE_EMULATOR_URL"] and emu.api_url != emu.target_url
    assert tensorlake_sandbox.run("echo", ["reused"]).stdout.strip() == "reused"
    assert labelled(emu.session_label), "the forwarder labels the sandboxes of a reused emulator"
    snap = tensorlake_sandbox.checkpoint(checkpoint_type=CheckpointType.FILESYSTEM, timeout=120)
    leaked = Sandbox.create(request_timeout=60)  # through the SDK's environment, never terminated
    write("reuse.json", label=emu.session_label, sandbox=tensorlake_sandbox.sandbox_id, leaked=leaked.sandbox_id,
          snapshot=snap.snapshot_id)
'''


def _api(emu: EmulatorProcess, path: str) -> dict:
    with urllib.request.urlopen(f"{emu.api_url}/v1/namespaces/default/{path}", timeout=10) as r:
        return json.load(r)


def test_reuses_a_running_emulator_and_cleans_up_through_its_api(inner: Inner, own_emulator: EmulatorProcess
                                                                  ) -> None:
    inner.extra_env["TLE_EMULATOR_URL"] = own_emulator.api_url
    inner.write(REUSE_TEST)
    res = inner.run()
    assert res.returncode == 0, res.stdout + res.stderr
    info = json.loads((inner.out / "reuse.json").read_text())
    assert session_leftovers(info["label"]) == ([], [])
    for sid in (info["sandbox"], info["leaked"]):
        assert _api(own_emulator, f"sandboxes/{sid}")["status"] == "terminated"
    assert info["snapshot"] not in {s["id"] for s in _api(own_emulator, "snapshots")["snapshots"]}
    assert inner.records() == []

    # A killed session of a reused emulator is reaped through the API (Docker not needed).
    inner.extra_env["SHIM_SNAPSHOT"] = "1"
    (inner.out / "hang.json").unlink(missing_ok=True)
    (inner.root / "test_inner.py").unlink()
    proc, info = _start_and_wait(inner)
    assert info["mode"] == "reused"
    kill_tree(proc)
    assert session_leftovers(info["label"])[0], "the killed session left its sandbox running"
    _next_session_reaps(inner, info)
    assert _api(own_emulator, f"sandboxes/{info['sandbox']}")["status"] == "terminated"
    assert info["snapshot"] not in {s["id"] for s in _api(own_emulator, "snapshots")["snapshots"]}


def test_unanswering_emulator_url_falls_back_to_starting_one(inner: Inner) -> None:
    inner.extra_env["TLE_EMULATOR_URL"] = "http://localhost:1"
    inner.write('''
def test_started(tensorlake_emulator):
    assert tensorlake_emulator.mode == "started"
''')
    res = inner.run()
    assert res.returncode == 0, res.stdout + res.stderr

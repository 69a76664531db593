"""The plugin with an exported TENSORLAKE_API_URL (issue 16, kind 4), a failed session's log (kind 7) and
Docker out of reach (kind 5): pytest on a generated test file, in a subprocess, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from shimhelpers import Inner, session_leftovers
from test_plugin import COMMON

from sdk_shim.launcher import EmulatorProcess

SPLIT_TEST = COMMON + '''
from tensorlake.sandbox import Sandbox


def test_same_emulator(tensorlake_sandbox, tensorlake_emulator):
    # The application under test uses the SDK's environment only; the fixture's sandbox must be visible to it.
    again = Sandbox.connect(tensorlake_sandbox.sandbox_id, request_timeout=60)
    assert again.run("echo", ["same"]).stdout.strip() == "same"
    app = Sandbox.create(request_timeout=60)  # never terminated: the session must clean it up
    assert labelled(tensorlake_emulator.session_label) and len(labelled(tensorlake_emulator.session_label)) == 2
    write("split.json", label=tensorlake_emulator.session_label, fixture=tensorlake_sandbox.sandbox_id,
          app=app.sandbox_id, mode=tensorlake_emulator.mode, target=tensorlake_emulator.target_url)
'''


def test_exported_api_url_means_one_emulator_and_one_cleanup(inner: Inner, own_emulator: EmulatorProcess) -> None:
    inner.extra_env["TENSORLAKE_API_URL"] = own_emulator.api_url
    inner.write(SPLIT_TEST)
    res = inner.run()
    assert res.returncode == 0, res.stdout + res.stderr
    info = json.loads((inner.out / "split.json").read_text())
    assert info["mode"] == "reused" and info["target"] == own_emulator.api_url
    for sid in (info["fixture"], info["app"]):
        body = httpx.get(f"{own_emulator.api_url}/v1/namespaces/default/sandboxes/{sid}").json()
        assert body["status"] == "terminated", body
    assert session_leftovers(info["label"]) == ([], [])
    assert inner.records() == []


def test_exported_api_url_under_xdist(inner: Inner, own_emulator: EmulatorProcess) -> None:
    inner.extra_env["TENSORLAKE_API_URL"] = own_emulator.api_url
    inner.write(SPLIT_TEST.replace("def test_same_emulator(", "import pytest\n\n\n@pytest.mark.parametrize('n', "
                                   "range(2))\ndef test_same_emulator(n, ").replace('"split.json"', 'f"split{n}.json"'))
    res = inner.run("-p", "xdist", "-n", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [json.loads(p.read_text()) for p in sorted(inner.out.glob("split*.json"))]
    assert len(rows) == 2 and {r["target"] for r in rows} == {own_emulator.api_url}
    for r in rows:
        assert session_leftovers(r["label"]) == ([], [])
    assert inner.records() == []


FAILING_TEST = COMMON + '''
def test_fails(tensorlake_sandbox, tensorlake_emulator):
    write("failing.json", data_dir=str(tensorlake_emulator.data_dir), label=tensorlake_emulator.session_label)
    assert tensorlake_sandbox.run("false").exit_code == 0, "a failing test"
'''


def test_failed_session_keeps_the_emulators_log(inner: Inner) -> None:
    inner.write(FAILING_TEST)
    res = inner.run()
    assert res.returncode == 1, res.stdout + res.stderr
    info = json.loads((inner.out / "failing.json").read_text())
    line = next(ln for ln in res.stdout.splitlines() if "emulator's log is kept at" in ln)
    kept = Path(line.rsplit(" ", 1)[1])
    assert kept.name == f"{info['label']}.log" and "lifecycle API on http://" in kept.read_text()
    assert not Path(info["data_dir"]).exists(), "the rest of the data folder still goes"
    # A passing session keeps nothing.
    inner.write('''
def test_passes(tensorlake_emulator):
    pass
''')
    kept.unlink()
    res = inner.run()
    assert res.returncode == 0 and "log is kept" not in res.stdout
    assert list(kept.parent.iterdir()) == []


def test_docker_unreachable_under_the_plugin_is_one_line(inner: Inner) -> None:
    inner.extra_env["TLE_DOCKER_HOST"] = "unix:///tmp/tle-no-such-docker.sock"
    inner.write('''
def test_one(tensorlake_sandbox):
    pass


def test_two(tensorlake_emulator):
    pass
''')
    res = inner.run()
    assert res.returncode == 1
    for noise in ("Traceback", "docker/api/client.py", "During handling", "direct cause"):
        assert noise not in res.stdout, res.stdout
    hits = [ln for ln in res.stdout.splitlines()
            if "tensorlake-emulator: Docker is not reachable at unix:///tmp/tle-no-such-docker.sock" in ln]
    assert hits, res.stdout
    assert inner.records() == [] and list(inner.tmp.iterdir()) == []


def test_emulator_that_cannot_start_is_one_line_and_its_log_is_kept(inner: Inner) -> None:
    inner.write('''
import socket

import pytest


@pytest.fixture(scope="session", autouse=True)
def occupy_the_planned_port(request):
    # The plugin chose its ports in pytest_configure; take the API port away before its emulator starts.
    import sdk_shim.pytest_plugin as plugin

    plan = request.config.stash[plugin._PLAN]
    s = socket.socket()
    s.bind(("127.0.0.1", plan.api_port))
    s.listen()
    yield
    s.close()


def test_needs_emulator(occupy_the_planned_port, tensorlake_emulator):
    pass
''')
    res = inner.run()
    assert res.returncode == 1
    line = next(ln for ln in res.stdout.splitlines() if "the session's emulator did not start" in ln)
    assert "already in use" in line and "full log: " in line, line
    kept = Path(line.rsplit("full log: ", 1)[1].split(")")[0])
    assert kept.exists() and "already in use" in kept.read_text()
    assert "log is kept at" in res.stdout
    assert inner.records() == [] and list(inner.tmp.iterdir()) == []


NAMES_TEST = COMMON + '''
from tensorlake.sandbox import Sandbox


def test_named(tensorlake_emulator):
    me = os.environ["SHIM_ME"]
    sbx = Sandbox.create(name="shared-db", request_timeout=60)
    info = Sandbox.connect("shared-db", request_timeout=60)  # by the name this session chose
    assert info.sandbox_id == sbx.sandbox_id
    with __import__("urllib.request").request.urlopen(
            f"{tensorlake_emulator.api_url}/v1/namespaces/default/sandboxes/shared-db", timeout=10) as r:
        assert json.load(r)["name"] == "shared-db"
    write(f"{me}.json", sandbox=sbx.sandbox_id, label=tensorlake_emulator.session_label)
    other = OUT / ("b.json" if me == "a" else "a.json")
    deadline = time.monotonic() + 120
    while not other.exists() and time.monotonic() < deadline:  # both sessions hold the name at once
        time.sleep(0.2)
    assert other.exists()
'''


def test_reusing_sessions_do_not_collide_on_names(inner: Inner, own_emulator: EmulatorProcess) -> None:
    import subprocess

    inner.extra_env["TLE_EMULATOR_URL"] = own_emulator.api_url
    inner.write(NAMES_TEST)
    procs = []
    for me in ("a", "b"):
        env = inner.env() | {"SHIM_ME": me}
        procs.append(subprocess.Popen(inner.cmd(), cwd=inner.root, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    rows = [json.loads((inner.out / f"{me}.json").read_text()) for me in ("a", "b")]
    assert rows[0]["sandbox"] != rows[1]["sandbox"]
    listed = httpx.get(f"{own_emulator.api_url}/v1/namespaces/default/sandboxes").json()["sandboxes"]
    stored = {s["name"] for s in listed if s["id"] in {r["sandbox"] for r in rows}}
    assert len(stored) == 2 and all(n.startswith("shared-db__") for n in stored), stored
    assert inner.records() == []

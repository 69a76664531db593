"""The dashboard at /emulator/ui (issue 17) in a real headless Chromium (tests/browser.py): what it shows
(sandboxes with state, resources and age, a sandbox's processes and output, snapshots, pools, the
request log live) and its actions. Saves the screenshots the README shows under docs/img/.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tensorlake.sandbox import CheckpointType, Sandbox

from sdk_shim import control
from sdk_shim.launcher import EmulatorProcess
from tests.browser import Browser, chromium_path

T = 60.0
IMG = Path(__file__).resolve().parent.parent / "docs" / "img"

pytestmark = pytest.mark.skipif(chromium_path() is None,
                                reason="chromium is not installed: run emulator/setup/host-setup.sh --browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser() as b:
        yield b


def _rows(browser: Browser, table: str) -> list[list[str]]:
    return browser.eval(f"""Array.from(document.querySelectorAll('#{table} tbody tr'))
        .map(tr => Array.from(tr.cells).map(td => td.textContent))""")


def _status(api_url: str, ns: str, ident: str) -> str:
    with urllib.request.urlopen(f"{api_url}/v1/namespaces/{ns}/sandboxes/{ident}", timeout=10) as r:
        return json.loads(r.read())["status"]


def _until(check, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"never: {what}")


def test_dashboard_shows_sandboxes_processes_snapshots_pools_and_requests(emulator: EmulatorProcess,
                                                                         browser: Browser) -> None:
    url, ns = emulator.api_url, f"ui-{uuid.uuid4().hex[:6]}"
    sb = Sandbox.create(namespace=ns, name=f"web-{uuid.uuid4().hex[:4]}", cpus=1.0, memory_mb=512, request_timeout=T)
    other = Sandbox.create(namespace=ns, cpus=0.5, memory_mb=256, request_timeout=T)
    try:
        proc = sb.start_process("sh", ["-c", "echo hello-from-the-dashboard; sleep 300"])
        snap = other.checkpoint(timeout=T, checkpoint_type=CheckpointType.FILESYSTEM)
        assert snap is not None
        code = urllib.request.urlopen(urllib.request.Request(
            f"{url}/v1/namespaces/{ns}/sandbox-pools", method="POST", headers={"content-type": "application/json"},
            data=json.dumps({"image": "tensorlake/ubuntu-minimal", "warm_containers": 0, "max_containers": 2,
                             "resources": {"cpus": 1.0, "memory_mb": 256}}).encode()), timeout=10).status
        assert code in (200, 201)
        browser.goto(f"{url}/emulator/ui")
        browser.wait_for("document.body.dataset.loaded === '1'")
        rows = {r[0]: r for r in _rows(browser, "sandboxes")}
        assert rows[sb.sandbox_id][1:5] == [sb.name, ns, "running", ""]
        assert rows[sb.sandbox_id][5:7] == ["1", "512 MiB"] and rows[sb.sandbox_id][7].endswith("s")
        assert rows[other.sandbox_id][5:7] == ["0.5", "256 MiB"]
        assert rows[sb.sandbox_id][8] == "suspendcheckpointterminate"
        snaps = {r[0]: r for r in _rows(browser, "snapshots")}
        assert snaps[snap.snapshot_id][1:3] == [other.sandbox_id, "filesystem"]
        assert any(r[1] == ns and r[3] == "0" and r[4] == "2" for r in _rows(browser, "pools"))
        assert browser.eval("document.getElementById('file-systems-note').textContent") in (
            "not served by this emulator", "none", "")
        # A sandbox's processes and their output.
        browser.eval(f"document.querySelector('#sandboxes tr[data-id=\"{sb.sandbox_id}\"]').click()")
        browser.wait_for(f"document.querySelector('#processes tr[data-pid=\"{proc.pid}\"]')")
        browser.eval(f"document.querySelector('#processes tr[data-pid=\"{proc.pid}\"]').click()")
        browser.wait_for("document.getElementById('output').textContent.includes('hello-from-the-dashboard')")
        # The request log, live: a request made now shows up without a reload.
        browser.wait_for("document.getElementById('stream-state').textContent === 'live'")
        sb.run("echo", ["ping"])
        browser.wait_for("Array.from(document.querySelectorAll('#requests tbody tr'))"
                         ".some(tr => tr.textContent.includes('/api/v1/processes/run'))")
        browser.screenshot(IMG / "dashboard.png")
    finally:
        sb.terminate()
        other.terminate()
        control.reset(namespace=ns, api_url=url)


def test_dashboard_actions_suspend_resume_checkpoint_terminate(emulator: EmulatorProcess, browser: Browser) -> None:
    url, ns = emulator.api_url, f"ui-{uuid.uuid4().hex[:6]}"
    sb = Sandbox.create(namespace=ns, name=f"act-{uuid.uuid4().hex[:4]}", cpus=1.0, memory_mb=256, request_timeout=T)
    try:
        browser.goto(f"{url}/emulator/ui")
        browser.wait_for("document.body.dataset.loaded === '1'")

        def click(action: str) -> None:
            selector = f'button[data-action="{action}"][data-id="{sb.sandbox_id}"]'
            browser.wait_for(f"document.querySelector('{selector}')")
            browser.eval(f"document.querySelector('{selector}').click()")

        click("checkpoint")
        browser.wait_for("document.getElementById('action-result').textContent.includes('snapshot snap_')")
        _until(lambda: any(s["sandbox_id"] == sb.sandbox_id and s["status"] == "completed"
                           for s in _inventory(url)["snapshots"]), "the checkpoint completed")
        _until(lambda: _status(url, ns, sb.sandbox_id) == "running", "running after the checkpoint")
        click("suspend")
        _until(lambda: _status(url, ns, sb.sandbox_id) == "suspended", "suspended from the dashboard")
        click("resume")
        _until(lambda: _status(url, ns, sb.sandbox_id) == "running", "resumed from the dashboard")
        browser.wait_for(f"document.querySelector('button[data-action=\"suspend\"][data-id=\"{sb.sandbox_id}\"]')")
        browser.screenshot(IMG / "dashboard-actions.png")
        click("terminate")
        _until(lambda: _status(url, ns, sb.sandbox_id) == "terminated", "terminated from the dashboard")
        browser.wait_for(f"""Array.from(document.querySelectorAll('#sandboxes tr[data-id="{sb.sandbox_id}"] td'))
            .some(td => td.textContent === 'terminated')""")
    finally:
        sb.terminate()
        control.reset(namespace=ns, api_url=url)


def _inventory(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/emulator/inventory", timeout=10) as r:
        return json.loads(r.read())


def test_dashboard_routes_refuse_bad_input(emulator: EmulatorProcess) -> None:
    def code(path: str) -> int:
        try:
            with urllib.request.urlopen(f"{emulator.api_url}{path}", timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code

    assert code("/emulator/ui/../server.py") == 404 and code("/emulator/ui/secret.txt") == 404
    assert code("/emulator/sandboxes/nope/processes") == 404
    assert code("/emulator/ui") == 200 and code("/emulator/ui/ui.js") == 200

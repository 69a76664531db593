"""The control fixtures of the pytest plugin (`tensorlake_control`, `tensorlake_clean`, `tensorlake_faults`),
used as a user would:
a generated test file run by pytest in a subprocess with its own emulator."""

from __future__ import annotations

import json

from shimhelpers import Inner

INNER_TEST = '''
import json, os, time
from pathlib import Path

import pytest
from tensorlake.sandbox import Sandbox

from sdk_shim.control import ControlError

OUT = Path(os.environ["SHIM_OUT"])
STATE = {}


def test_1_leaves_a_sandbox_behind(tensorlake_clean, tensorlake_emulator):
    sb = Sandbox.create(**tensorlake_emulator.sdk_kwargs())
    assert sb.run("echo", ["x"]).stdout.strip() == "x"
    STATE["leaked"] = sb.sandbox_id


def test_2_the_clean_fixture_reset_it(tensorlake_control, tensorlake_emulator):
    leaked = STATE["leaked"]
    names = [s.sandbox_id for s in Sandbox.list(**tensorlake_emulator.sdk_kwargs())]
    assert leaked not in names
    created = tensorlake_control.requests(sandbox=leaked, method="POST", port="api")
    assert [e["status"] for e in created] == [200]
    proxied = tensorlake_control.requests(sandbox=leaked, port="proxy")
    assert proxied and all(e["status"] == 200 for e in proxied)


def test_3_clock_and_metrics(tensorlake_control, tensorlake_emulator):
    sb = Sandbox.create(timeout_secs=3600, **tensorlake_emulator.sdk_kwargs())
    report = tensorlake_control.advance_clock(3601)
    assert report["fired"] == [{"sandbox_id": sb.sandbox_id, "action": "terminate"}]
    assert tensorlake_control.clock()["offset_secs"] == 3601
    assert 'tle_operations_total{operation="create",outcome="success"}' in tensorlake_control.metrics()
    with pytest.raises(ControlError) as err:
        tensorlake_control.advance_clock(-1)
    assert err.value.status == 400 and err.value.code == "BAD_REQUEST"
    with pytest.raises(ValueError):
        tensorlake_control.reset()
    report = tensorlake_control.reset_session()
    (OUT / "reset.json").write_text(json.dumps(report))


def test_4_faults_scoped_to_the_session(tensorlake_faults, tensorlake_emulator, tensorlake_control):
    from tensorlake.sandbox import SandboxError

    made = tensorlake_faults.inject("create_fail", reason="ConfigurationError", count=1)
    assert made["session"] == tensorlake_control.session_label
    with pytest.raises(SandboxError) as err:
        Sandbox.create(**tensorlake_emulator.sdk_kwargs())
    assert err.value.reason == "ConfigurationError"
    STATE["left"] = tensorlake_faults.inject("suspend_slow", delay_secs=1)["id"]


def test_5_the_faults_fixture_removed_its_faults(tensorlake_control):
    assert STATE["left"] not in [f["id"] for f in tensorlake_control.faults()]
'''


def test_control_fixtures_reset_advance_and_query(inner: Inner) -> None:
    inner.write(INNER_TEST)
    res = inner.run()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "5 passed" in res.stdout, res.stdout
    report = json.loads((inner.out / "reset.json").read_text())
    assert report["terminated"] == [] and report["errors"] == [] and len(report["sandboxes"]) == 1

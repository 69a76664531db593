"""Issue 9 kind 5: a sandbox whose container dies from outside is noticed at once (the engine's
exit watch, and the first failed call), marked terminated with the reason, and the SDK is told with
an error it does not retry."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest
from tensorlake.sandbox import Sandbox

from sdk_shim.launcher import EmulatorProcess

T = 30.0


def _status(emulator: EmulatorProcess, sandbox_id: str) -> dict:
    return httpx.get(f"{emulator.api_url}/v1/namespaces/default/sandboxes/{sandbox_id}", timeout=10).json()


@pytest.mark.parametrize("how", ["kill", "stop", "rm"])
def test_a_container_killed_from_outside_is_noticed(emulator: EmulatorProcess, how: str) -> None:
    sb = Sandbox.create(cpus=0.5, memory_mb=256, request_timeout=T)
    assert sb.run("true").exit_code == 0
    cmd = {"kill": ["docker", "kill", f"tle-{sb.sandbox_id}"], "stop": ["docker", "stop", "-t", "0",
                                                                       f"tle-{sb.sandbox_id}"],
           "rm": ["docker", "rm", "-f", f"tle-{sb.sandbox_id}"]}[how]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    deadline = time.monotonic() + 5
    while _status(emulator, sb.sandbox_id)["status"] != "terminated":
        assert time.monotonic() < deadline, _status(emulator, sb.sandbox_id)
        time.sleep(0.1)
    info = _status(emulator, sb.sandbox_id)
    assert info["termination_reason"] in ("container_exited", "container_lost")
    assert info["error_details"] and info["outcome"].startswith("Failure(")
    started = time.monotonic()
    with pytest.raises(Exception) as err:
        sb.run("true")
    assert time.monotonic() - started < 5, "the SDK retried instead of being told at once"
    assert "terminated" in str(err.value) or "not found" in str(err.value).lower()

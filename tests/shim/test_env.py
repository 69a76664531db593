"""use_emulator / emulator_env with the real SDK against a running emulator.

The SDK reads its environment once, at import, so each case runs in a fresh Python process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sdk_shim.env import emulator_env
from sdk_shim.launcher import EmulatorProcess, free_port

SCRIPT = '''
import sys, warnings
from sdk_shim import use_emulator

env = use_emulator(sys.argv[1], namespace=sys.argv[2] if len(sys.argv) > 2 else None)
from tensorlake.sandbox import Sandbox  # after use_emulator: the SDK reads the environment now

sandbox = Sandbox.create(request_timeout=60)
try:
    result = sandbox.run("echo", ["via-shim"])
    print("OUT", result.stdout.strip(), sandbox.sandbox_id)
    again = Sandbox.connect(sandbox.sandbox_id, request_timeout=60)
    print("CONNECT", again.run("echo", ["again"]).stdout.strip())
finally:
    sandbox.terminate()
'''

LATE_SCRIPT = '''
import sys, warnings
import tensorlake.sandbox  # imported too early: its defaults are read already
from sdk_shim import use_emulator

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    use_emulator(sys.argv[1])
print("WARNED", any("imported before use_emulator" in str(w.message) for w in caught))
'''


def _python(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TENSORLAKE_", "INDEXIFY_"))}
    base.update(env or {})
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=base,
                          timeout=240)


def test_emulator_env_local_and_remote_shapes() -> None:
    assert emulator_env("http://localhost:8900") == {"TENSORLAKE_API_URL": "http://localhost:8900"}
    assert emulator_env("http://127.0.0.1:8900", "team-a") == {"TENSORLAKE_API_URL": "http://127.0.0.1:8900",
                                                               "INDEXIFY_NAMESPACE": "team-a"}
    # Any other host is not "local mode" for the SDK: it needs the flat lifecycle paths (docs/protocol.md §2).
    assert emulator_env("http://emulator:8900") == {"TENSORLAKE_API_URL": "http://emulator:8900",
                                                    "TENSORLAKE_SANDBOX_API_URL": "http://emulator:8900"}


def test_use_emulator_with_the_real_sdk(emulator: EmulatorProcess) -> None:
    out = _python(SCRIPT, emulator.api_url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OUT via-shim" in out.stdout and "CONNECT again" in out.stdout


def test_use_emulator_with_a_namespace(emulator: EmulatorProcess) -> None:
    out = _python(SCRIPT, emulator.api_url, "team-shim")
    assert out.returncode == 0, out.stdout + out.stderr
    sandbox_id = out.stdout.split("OUT via-shim ")[1].split()[0]
    import json
    import urllib.request

    with urllib.request.urlopen(f"{emulator.api_url}/v1/namespaces/team-shim/sandboxes/{sandbox_id}", timeout=10) as r:
        assert json.load(r)["namespace"] == "team-shim"


def test_use_emulator_warns_when_the_sdk_was_imported_first(emulator: EmulatorProcess) -> None:
    out = _python(LATE_SCRIPT, emulator.api_url)
    assert out.returncode == 0, out.stderr
    assert "WARNED True" in out.stdout


def test_use_emulator_under_a_non_local_host_name() -> None:
    """The docker-compose shape (`http://emulator:8900`), on loopback: 127.0.0.2 is not "local" to the SDK, so it
    sends flat lifecycle paths to TENSORLAKE_SANDBOX_API_URL and routes the data plane by X-Tensorlake-Sandbox-Id."""
    data_dir = Path(tempfile.mkdtemp(prefix="tle-h-", dir="/tmp"))
    proxy_port = free_port()
    proc = EmulatorProcess(data_dir=data_dir, proxy_port=proxy_port, connect_host="127.0.0.2",
                           extra_env={"TLE_BIND": "127.0.0.2", "TLE_PROXY_URL": f"http://127.0.0.2:{proxy_port}"})
    try:
        proc.start()
        assert proc.api_url.startswith("http://127.0.0.2:")
        out = _python(SCRIPT, proc.api_url)
        assert out.returncode == 0, out.stdout + out.stderr + proc.log_tail()
        assert "OUT via-shim" in out.stdout and "CONNECT again" in out.stdout
    finally:
        proc.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

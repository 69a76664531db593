"""Foundation: the emulator starts as a real subprocess, answers on both ports, and the set-up is idempotent."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

from sdk_shim.launcher import EmulatorProcess, port_open

REPO = Path(__file__).resolve().parent.parent


def test_both_ports_answer_and_health(emulator: EmulatorProcess) -> None:
    assert port_open(emulator.api_port) and port_open(emulator.proxy_port)
    with urllib.request.urlopen(f"{emulator.api_url}/healthz", timeout=5) as r:
        assert json.load(r) == {"healthy": True}
    # The proxy answers a request that names no sandbox with the protocol's error.
    try:
        urllib.request.urlopen(f"{emulator.proxy_url}/api/v1/health", timeout=5)
        raise AssertionError("expected 400")
    except urllib.error.HTTPError as err:
        assert err.code == 400
        assert json.load(err)["code"] == "MISSING_SANDBOX_ID"


def test_capabilities_report_checkpoint_support(emulator: EmulatorProcess) -> None:
    with urllib.request.urlopen(f"{emulator.api_url}/emulator/capabilities", timeout=5) as r:
        caps = json.load(r)
    assert caps["engine"]["version"]
    assert isinstance(caps["checkpoints"]["criu"], bool)
    assert caps["checkpoints"]["criu_detail"]


def test_setup_is_idempotent() -> None:
    out = subprocess.run(["bash", str(REPO / "emulator/setup/host-setup.sh")], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # On a ready host every stage reports that it found its work done and changed nothing.
    assert any("already running, reusing it" in ln for ln in lines), out.stdout
    assert any("present" in ln and "image:" in ln for ln in lines), out.stdout
    assert any("up to date" in ln for ln in lines), out.stdout
    assert not any("installing" in ln or "importing" in ln or "starting dockerd" in ln for ln in lines), out.stdout
    assert lines[-1] == "[setup] ready"


def test_help_lists_configuration() -> None:
    exe = REPO / ".venv/bin/tensorlake-emulator"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for var in ("TLE_API_PORT", "TLE_PROXY_PORT", "TLE_BIND", "TLE_DATA_DIR", "TLE_DEFAULT_IMAGE", "TLE_RUNTIME",
                "TLE_LOG_LEVEL"):
        assert var in out.stdout

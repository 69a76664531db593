"""Failures a user meets first, each one line saying what is wrong and what to run, before any slow work
(issue 16, kind 5). The CLI runs as a user runs it, in a subprocess."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_cli import cli

from sdk_shim.launcher import EmulatorProcess, free_port


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tle-x-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _serve(data_dir: Path, **env: str):  # noqa: ANN202
    base = {"TLE_API_PORT": str(free_port()), "TLE_PROXY_PORT": str(free_port()), "TLE_DATA_DIR": str(data_dir)}
    base.update(env)
    started = time.monotonic()
    out = cli("serve", env=base, timeout=60)
    return out, time.monotonic() - started


def _one_line(out, *words: str) -> str:  # noqa: ANN001
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stdout + out.stderr
    assert lines[0].startswith("error: ") and all(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_port_in_use_is_one_line_before_any_work(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out, took = _serve(data_dir, TLE_API_PORT=str(port))
    _one_line(out, f"port {port}", "already in use", "TLE_API_PORT")
    assert took < 5, f"{took:.1f}s: the check must come before the start-up's slow work"
    assert not (data_dir / "state.sqlite3").exists(), "nothing was opened"


def test_two_emulators_cannot_open_one_data_folder(own_emulator: EmulatorProcess) -> None:
    out, _ = _serve(own_emulator.data_dir)
    _one_line(out, str(own_emulator.data_dir), "in use by another emulator", f"pid {own_emulator.pid}",
              own_emulator.api_url)
    assert httpx.get(f"{own_emulator.api_url}/healthz").status_code == 200, "the first one is untouched"


def test_docker_unreachable_is_one_line(data_dir: Path) -> None:
    out, took = _serve(data_dir, TLE_DOCKER_HOST="unix:///tmp/tle-no-such-docker.sock")
    _one_line(out, "Docker is not reachable at unix:///tmp/tle-no-such-docker.sock", "tensorlake-emulator setup")
    assert took < 10
    # The data folder's lock is released again: a later start on it is not refused.
    assert "in use" not in _serve(data_dir, TLE_DOCKER_HOST="unix:///tmp/tle-no-such-docker.sock")[0].stderr


def test_missing_default_image_hints_at_setup(data_dir: Path) -> None:
    proc = EmulatorProcess(data_dir=data_dir, extra_env={"TLE_DEFAULT_IMAGE": "tensorlake-emulator/absent:none",
                                                         "TLE_CHECKPOINT": "off"})
    try:
        proc.start()
        log = Path(proc.log_path or "").read_text()
        assert "default image tensorlake-emulator/absent:none is missing: run `tensorlake-emulator setup`" in log
    finally:
        proc.stop()


def test_sdk_aimed_at_the_proxy_port_is_told_the_lifecycle_url(emulator: EmulatorProcess) -> None:
    from tensorlake.sandbox import Sandbox

    r = httpx.post(f"{emulator.proxy_url}/v1/namespaces/default/sandboxes", json={})
    assert r.status_code == 400 and r.json()["code"] == "MISSING_SANDBOX_ID"
    hint = f"is the emulator's sandbox proxy; point the SDK (TENSORLAKE_API_URL or api_url=) at the lifecycle API, " \
           f"http://localhost:{emulator.api_port}"
    assert r.json()["error"].startswith("Missing x-tensorlake-sandbox-id header: port ") and hint in r.json()["error"]
    with pytest.raises(Exception) as caught:
        Sandbox.create(api_url=emulator.proxy_url, request_timeout=10)
    assert f"http://localhost:{emulator.api_port}" in str(caught.value), str(caught.value)

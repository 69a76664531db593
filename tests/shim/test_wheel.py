"""The package as pip installs it (issue 16, kind 3): a wheel built from this tree, installed into a fresh venv,
brings a ready host to "ready" with `tensorlake-emulator setup`, and starts, reports, logs and stops a
background emulator. The venv borrows the test venv's third-party packages through a .pth file (no network)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from shimhelpers import REPO

from sdk_shim.launcher import free_port


@pytest.fixture(scope="module")
def wheel_venv() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="tle-w-", dir="/tmp"))
    try:
        # A copy of the tree: building writes build/ and *.egg-info next to the sources.
        src = tmp / "src"
        shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info",
                                                                "__pycache__", "wheels"))
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                                "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
        assert built.returncode == 0, built.stdout + built.stderr
        wheel = next((tmp / "dist").glob("tensorlake_emulator-*.whl"))
        names = zipfile.ZipFile(wheel).namelist()
        for shipped in ("emulator/setup/host-setup.sh", "emulator/setup/criu-install.sh",
                        "emulator/setup/agent-build.sh", "emulator/cli/__main__.py", "emulator/labels.py",
                        "sdk_shim/pytest_plugin.py"):
            assert shipped in names, shipped
        venv = tmp / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        inst = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                              capture_output=True, text=True, timeout=300, env=_clean_env())
        assert inst.returncode == 0, inst.stdout + inst.stderr
        # Only now: pip must not see the test venv's editable install of the same project as "already there".
        purelib = next((venv / "lib").glob("python3*/site-packages"))
        (purelib / "zz-test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        yield venv
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("TLE_", "TENSORLAKE_")) and k != "PYTHONPATH"}


def _run(venv: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600):  # noqa: ANN202
    full = _clean_env()
    full.update(env or {})
    return subprocess.run([str(venv / "bin/tensorlake-emulator"), *args], capture_output=True, text=True, env=full,
                          timeout=timeout, cwd="/")


def test_installed_wheel_runs_its_own_code(wheel_venv: Path) -> None:
    out = subprocess.run([str(wheel_venv / "bin/python"), "-c", "import emulator; print(emulator.__file__)"],
                         capture_output=True, text=True, cwd="/",
                         env=_clean_env())
    assert str(wheel_venv) in out.stdout, out.stdout + out.stderr


def test_setup_from_the_wheel_reaches_ready(wheel_venv: Path, tmp_path: Path) -> None:
    out = _run(wheel_venv, "setup", env={"TLE_SETUP_STATE": str(tmp_path / "state")})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAILED" not in out.stdout + out.stderr
    assert "python: running from the installed package" in out.stdout
    assert out.stdout.rstrip().endswith("[setup] ready")
    site_packages = next((wheel_venv / "lib").glob("python3*/site-packages"))
    assert not (site_packages / ".venv").exists() and not (site_packages.parent / ".venv").exists()


def test_start_status_logs_stop_of_a_background_emulator(wheel_venv: Path) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tle-b-", dir="/tmp"))
    env = {"TLE_DATA_DIR": str(data_dir), "TLE_API_PORT": str(free_port()), "TLE_PROXY_PORT": str(free_port()),
           "TLE_TERMINATE_ON_EXIT": "1"}
    url = f"http://localhost:{env['TLE_API_PORT']}"
    try:
        out = _run(wheel_venv, "start", env=env, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"export TENSORLAKE_API_URL={url}" in out.stdout
        assert httpx.get(f"{url}/healthz").status_code == 200
        again = _run(wheel_venv, "start", env=env)
        assert again.returncode == 0 and "already serves" in again.stdout
        status = _run(wheel_venv, "status", "--url", url, env=env)
        assert "this data dir    served by pid" in status.stdout and f"answering at {url}" in status.stdout
        logs = _run(wheel_venv, "logs", "-n", "0", env=env)
        assert logs.returncode == 0 and "lifecycle API on http://" in logs.stdout
        stop = _run(wheel_venv, "stop", env=env, timeout=120)
        assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/healthz", timeout=2)
        assert "no emulator serves" in _run(wheel_venv, "stop", env=env).stdout
    finally:
        _run(wheel_venv, "stop", env=env, timeout=120)
        shutil.rmtree(data_dir, ignore_errors=True)

"""Helpers for the sdk_shim tests: run pytest in a subprocess on a generated test file, and look at Docker.

Every inner pytest runs with a clean SDK environment, its own sessions folder and its own temp folder, so
it neither sees this process's emulator nor reaps anyone else's sessions. (A module of its own, not the
conftest, so test files can import it.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sdk_shim import docker_sweep
from sdk_shim.launcher import process_start_time

REPO = Path(__file__).resolve().parents[2]
INNER_INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
timeout = 240
addopts = -p no:cacheprovider
"""


def docker_ids(kind: str, label: str) -> list[str]:
    """Ids of containers (all states) or images that carry `label` (key=value), through docker-py."""
    client = docker_sweep.client()
    try:
        if kind == "containers":
            return [c.id for c in client.containers.list(all=True, sparse=True, filters={"label": [label]})]
        return [i["Id"] for i in client.api.images(filters={"label": [label]})]
    finally:
        client.close()


def session_leftovers(label: str) -> tuple[list[str], list[str]]:
    return docker_sweep.session_leftovers(label)


def pid_gone(pid: int, start: int | None = None) -> bool:
    now = process_start_time(pid)
    if now is None or (start is not None and now != start):
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_for(pred, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Inner:
    """A folder with a generated test file and what an inner pytest run needs."""

    root: Path
    out: Path
    sessions: Path
    tmp: Path
    extra_env: dict[str, str]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TENSORLAKE_", "INDEXIFY_", "PYTEST_", "TLE_")) and k != "COV_CORE_SOURCE"}
        env.update({"TLE_SESSIONS_DIR": str(self.sessions), "SHIM_OUT": str(self.out), "TMPDIR": str(self.tmp),
                    "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        return env

    def write(self, source: str, name: str = "test_inner.py") -> Path:
        path = self.root / name
        path.write_text(source)
        return path

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pytest", "-q", "-rA", str(self.root), *args]

    def run(self, *args: str, timeout: float = 280) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), cwd=self.root, env=self.env(), capture_output=True, text=True,
                              timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        log = open(self.root / "inner.log", "w")  # noqa: SIM115 - closed by the child's exit
        return subprocess.Popen(self.cmd(*args), cwd=self.root, env=self.env(), stdout=log,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def records(self) -> list[Path]:
        return sorted(self.sessions.glob("*.json")) if self.sessions.exists() else []


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """Kill a pytest subprocess this test started (its own process group) if it is still running."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

"""Start an emulator as a subprocess on free ports with its own data folder, and stop it again."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True when an emulator's lifecycle API at api_url answers /healthz with 200 within timeout seconds."""
    import httpx

    try:
        return httpx.get(f"{api_url}/healthz", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of pid (clock ticks since boot), to tell a process from a later one reusing its pid.

    Read from /proc by hand rather than with psutil: Linux is the only host the emulator runs on, and psutil
    would be a compiled dependency for one field.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces and parentheses, so split after its last ")".
    return int(stat.rsplit(")", 1)[1].split()[19])


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when the thread that started it dies (even by SIGKILL).

    Only from the main thread: the signal follows the forking *thread*, so a child started from a short-lived
    thread would be stopped as soon as that thread ended.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _emulator_command() -> list[str]:
    exe = shutil.which("tensorlake-emulator", path=str(Path(sys.executable).parent))
    return [exe, "serve"] if exe else [sys.executable, "-m", "emulator.cli", "serve"]


@dataclass
class EmulatorProcess:
    data_dir: Path
    api_port: int = field(default_factory=free_port)
    proxy_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    # Sets TLE_SESSION_LABEL: every sandbox and snapshot this emulator makes carries the label.
    session_label: str | None = None
    # Stop the emulator (SIGTERM, so it terminates its sandboxes) when the process that started it dies.
    die_with_parent: bool = False
    # The host name clients use (and the readiness check connects to); set TLE_BIND to match when not localhost.
    connect_host: str = "localhost"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def api_url(self) -> str:
        return f"http://{self.connect_host}:{self.api_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://{self.connect_host}:{self.proxy_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "TLE_API_PORT": str(self.api_port), "TLE_PROXY_PORT": str(self.proxy_port),
            "TLE_DATA_DIR": str(self.data_dir), "TLE_BIND": "127.0.0.1",
            "TLE_TERMINATE_ON_EXIT": "1",
        })
        if self.session_label:
            env["TLE_SESSION_LABEL"] = self.session_label
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> EmulatorProcess:
        return self.spawn().wait_ready(timeout)

    def spawn(self) -> EmulatorProcess:
        """Start the process without waiting for it to answer (then wait_ready)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_path or self.data_dir / "emulator.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(_emulator_command(), env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent() if self.die_with_parent else None)
        log.close()
        return self

    def wait_ready(self, timeout: float = 60.0) -> EmulatorProcess:
        assert self.proc is not None, "spawn() first"
        # A plain poll loop, not a retry library (tenacity, backoff): one fixed-interval deadline, which must also
        # notice the child exiting, is shorter written out than configured, and adds no dependency.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self.proc.returncode}:\n{self.log_tail()}")
            host = "127.0.0.1" if self.connect_host == "localhost" else self.connect_host
            if api_healthy(self.api_url, 1.0) and port_open(self.proxy_port, host):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"emulator did not answer within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path or "").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

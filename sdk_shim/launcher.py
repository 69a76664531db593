"""Start an emulator as a subprocess on free ports with its own data folder, and stop it again."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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
    try:
        with urllib.request.urlopen(f"{api_url}/healthz", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


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

    @property
    def api_url(self) -> str:
        return f"http://localhost:{self.api_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://localhost:{self.proxy_port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "TLE_API_PORT": str(self.api_port), "TLE_PROXY_PORT": str(self.proxy_port),
            "TLE_DATA_DIR": str(self.data_dir), "TLE_BIND": "127.0.0.1",
            "TLE_TERMINATE_ON_EXIT": "1",
        })
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> EmulatorProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_path or self.data_dir / "emulator.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(_emulator_command(), env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self.proc.returncode}:\n{self.log_tail()}")
            if api_healthy(self.api_url, 1.0) and port_open(self.proxy_port):
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

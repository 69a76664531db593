"""Shared helpers for the benchmarks: an emulator subprocess, percentiles, the raw Docker baseline."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sdk_shim.launcher import EmulatorProcess, free_port

IMAGE = os.environ.get("TLE_DEFAULT_IMAGE", "tensorlake-emulator/sandbox:latest")
BENCH_LABEL = "dev.tensorlake-emulator.bench=1"


def start_emulator(extra_env: dict[str, str] | None = None, set_env: bool = True) -> EmulatorProcess:
    """Starts an emulator; sets TENSORLAKE_API_URL to it (before tensorlake is imported by the caller)
    unless `set_env` is False (a second emulator, addressed with api_url=)."""
    api, proxy = free_port(), free_port()
    if set_env:
        os.environ["TENSORLAKE_API_URL"] = f"http://localhost:{api}"
    return EmulatorProcess(data_dir=Path(tempfile.mkdtemp(prefix="tle-bench-")), api_port=api,
                           proxy_port=proxy, extra_env=extra_env or {}).start()


def stop_emulator(emu: EmulatorProcess) -> None:
    """Stop it (its sandboxes are terminated on exit) and remove its data folder."""
    emu.stop()
    shutil.rmtree(emu.data_dir, ignore_errors=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def fmt(values: list[float]) -> str:
    return (f"p50 {pct(values, 50) * 1000:7.1f} ms  p95 {pct(values, 95) * 1000:7.1f} ms  "
            f"mean {statistics.mean(values) * 1000:7.1f} ms  (n={len(values)})")


def machine() -> str:
    cpus = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.system()} {platform.release()}, {cpus} cores, {mem:.0f} GiB, {time.strftime('%Y-%m-%d')}"


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


def raw_docker_create_start() -> float:
    """create+start of the same image through the Engine API (docker CLI), removed afterwards."""
    t0 = time.perf_counter()
    cid = docker("run", "-d", "--label", BENCH_LABEL, "--cpus", "1", "--memory", "1g", IMAGE, "sleep", "300")
    dt = time.perf_counter() - t0
    docker("rm", "-f", cid)
    return dt


def run_true_times(sb: Any, n: int, warmup: int = 10) -> list[float]:
    """Seconds of each of `n` `sb.run("true")` round trips through the SDK, after `warmup` untimed ones."""
    for _ in range(warmup):
        sb.run("true")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        sb.run("true")
        times.append(time.perf_counter() - t0)
    return times

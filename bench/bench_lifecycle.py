"""Create-to-running latency through the SDK vs a raw `docker run` of the same image, in one run:
the cold path (TLE_WARM_RESERVE=0), a create served by the warm reserve, a pool claim, a burst of
10 concurrent creates with 10 warm, and the memory an idle warm container costs.

Run: .venv/bin/python bench/bench_lifecycle.py
"""

from __future__ import annotations

import asyncio
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (  # noqa: E402
    docker,
    fmt,
    machine,
    pct,
    raw_docker_create_start,
    start_emulator,
    stop_emulator,
)

WARM = 10
warm_emu = start_emulator({"TLE_WARM_RESERVE": str(WARM)})
cold_emu = start_emulator({"TLE_WARM_RESERVE": "0"}, set_env=False)
from tensorlake.sandbox import AsyncSandbox, Sandbox, SandboxClient  # noqa: E402  (after TENSORLAKE_API_URL)

from emulator.server import instance_label  # noqa: E402

REFILL_S = 0.6  # between sequential warm creates: the reserve refills in the background meanwhile


def _idle_warm(emu: object, n: int, timeout: float = 120) -> list[str]:
    """Wait until the emulator's instance has n running containers (all warm: no sandbox exists yet)."""
    label = f"dev.tensorlake-emulator.instance={instance_label(emu.data_dir)}"  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = docker("ps", "-q", "--filter", f"label={label}").split()
        if len(ids) >= n:
            time.sleep(1.0)  # their agents answer
            return ids
        time.sleep(0.2)
    raise TimeoutError(f"{n} warm containers not up within {timeout}s")


def sequential(n: int, api_url: str, pause: float = 0.0, **kwargs: object) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        sb = Sandbox.create(request_timeout=120, api_url=api_url, **kwargs)  # type: ignore[arg-type]
        out.append(time.perf_counter() - t0)
        sb.terminate()
        time.sleep(pause)
    return out


async def burst(n: int) -> tuple[list[float], float]:
    async def one() -> tuple[float, AsyncSandbox]:
        t0 = time.perf_counter()
        sb = await AsyncSandbox.create(request_timeout=120)
        return time.perf_counter() - t0, sb

    t0 = time.perf_counter()
    res = await asyncio.gather(*(one() for _ in range(n)))
    wall = time.perf_counter() - t0
    await asyncio.gather(*(sb.terminate() for _, sb in res))
    return [d for d, _ in res], wall


def warm_memory_mib(ids: list[str]) -> float:
    """Mean memory (cgroup usage as `docker stats` reports it) of idle warm containers, MiB."""
    out = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", *ids).splitlines()
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}
    vals = [float(u.split("/")[0].strip()[:-3]) * units[u.split("/")[0].strip()[-3:]] for u in out]
    return sum(vals) / len(vals)


def pool_claims(n: int, api_url: str) -> list[float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = SandboxClient(api_url=api_url, request_timeout=120)
    pool_id = client.create_pool(image="tensorlake-emulator/sandbox:latest", warm_containers=2).pool_id
    try:
        while len([c for c in client.get_pool(pool_id).containers or [] if c.sandbox_id is None]) < 2:
            time.sleep(0.2)
        time.sleep(1.0)
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            sb = Sandbox.create(pool_id=pool_id, request_timeout=120, api_url=api_url)
            out.append(time.perf_counter() - t0)
            sb.terminate()
            time.sleep(REFILL_S)
        return out
    finally:
        client.delete_pool(pool_id)
        client.close()


def main() -> None:
    try:
        print(f"machine: {machine()}")
        ids = _idle_warm(warm_emu, WARM)
        mem = warm_memory_mib(ids)
        b, wall = asyncio.run(burst(WARM))
        Sandbox.create(request_timeout=120, api_url=cold_emu.api_url).terminate()  # warm-up of the cold path
        raw = [raw_docker_create_start() for _ in range(20)]
        cold = sequential(20, cold_emu.api_url, cpus=1.0, memory_mb=1024)
        _idle_warm(warm_emu, WARM)
        warm = sequential(20, warm_emu.api_url, pause=REFILL_S, cpus=1.0, memory_mb=1024)
        claims = pool_claims(20, warm_emu.api_url)
        print(f"raw docker run (20 seq):                          {fmt(raw)}")
        print(f"SDK create->running, cold (20 seq, reserve off):  {fmt(cold)}")
        print(f"SDK create->running, warm reserve (20 seq):       {fmt(warm)}")
        print(f"SDK pool claim->running (20 seq):                 {fmt(claims)}")
        print(f"SDK burst of {WARM} concurrent creates, {WARM} warm:     {fmt(b)}  wall {wall:.2f} s")
        print(f"idle warm container memory: {mem:.1f} MiB (mean of {len(ids)}, docker stats)")
        print(f"ratio cold/raw p50: {pct(cold, 50) / pct(raw, 50):.2f}x")
    finally:
        stop_emulator(warm_emu)
        stop_emulator(cold_emu)


if __name__ == "__main__":
    main()

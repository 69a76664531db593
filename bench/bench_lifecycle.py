"""Create-to-running latency through the SDK vs a raw Docker create+start of the same image.

Run: .venv/bin/python bench/bench_lifecycle.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import fmt, machine, pct, raw_docker_create_start, start_emulator, stop_emulator  # noqa: E402

emu = start_emulator()
from tensorlake.sandbox import AsyncSandbox, Sandbox  # noqa: E402  (after TENSORLAKE_API_URL is set)


def sequential(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        sb = Sandbox.create(cpus=1.0, memory_mb=1024, request_timeout=120)
        out.append(time.perf_counter() - t0)
        sb.terminate()
    return out


async def concurrent(n: int) -> tuple[list[float], float]:
    async def one() -> tuple[float, AsyncSandbox]:
        t0 = time.perf_counter()
        sb = await AsyncSandbox.create(cpus=0.5, memory_mb=512, request_timeout=120)
        return time.perf_counter() - t0, sb

    t0 = time.perf_counter()
    res = await asyncio.gather(*(one() for _ in range(n)))
    wall = time.perf_counter() - t0
    await asyncio.gather(*(sb.terminate() for _, sb in res))
    return [d for d, _ in res], wall


def main() -> None:
    try:
        print(f"machine: {machine()}")
        Sandbox.create(request_timeout=120).terminate()  # warm-up
        raw = [raw_docker_create_start() for _ in range(20)]
        seq = sequential(20)
        conc, wall = asyncio.run(concurrent(10))
        print(f"raw docker create+start (20 seq):     {fmt(raw)}")
        print(f"SDK create->running (20 sequential):  {fmt(seq)}")
        print(f"SDK create->running (10 concurrent):  {fmt(conc)}  wall {wall:.2f} s")
        print(f"ratio SDK/raw p50 sequential: {pct(seq, 50) / pct(raw, 50):.2f}x")
    finally:
        stop_emulator(emu)


if __name__ == "__main__":
    main()

"""run("true") round trip through the SDK vs `docker exec`, and 50 MB file throughput.

Run: .venv/bin/python bench/bench_dataplane.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import fmt, machine, pct, run_true_times, start_emulator, stop_emulator  # noqa: E402

emu = start_emulator()
from tensorlake.sandbox import Sandbox  # noqa: E402


def main() -> None:
    try:
        print(f"machine: {machine()}")
        sb = Sandbox.create(cpus=1.0, memory_mb=1024, request_timeout=120)
        container = f"tle-{sb.sandbox_id}"
        sdk = run_true_times(sb, 200)
        raw = []
        for _ in range(200):
            t0 = time.perf_counter()
            subprocess.run(["docker", "exec", container, "true"], check=True)
            raw.append(time.perf_counter() - t0)
        print(f"SDK run('true') x200:       {fmt(sdk)}")
        print(f"docker exec true x200:      {fmt(raw)}")
        print(f"ratio SDK/docker exec p50:  {pct(sdk, 50) / pct(raw, 50):.2f}x")

        size = 50 * 1024 * 1024
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(os.urandom(size))
        t0 = time.perf_counter()
        sb.upload_file(f.name, "/workspace/big.bin")
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = sb.read_file("/workspace/big.bin").value
        down = time.perf_counter() - t0
        assert len(data) == size
        os.unlink(f.name)
        print(f"50 MB upload:   {up:.2f} s  ({size / up / 2**20:.0f} MiB/s)")
        print(f"50 MB download: {down:.2f} s  ({size / down / 2**20:.0f} MiB/s)")
        sb.terminate()
    finally:
        stop_emulator(emu)


if __name__ == "__main__":
    main()

"""Suspend and resume of a 200 MB sandbox, interleaved between two checkouts of the emulator.

On a shared host the load changes from one minute to the next, so two benchmark runs one after the
other compare the load as much as the code. Here one emulator per checkout runs at the same time,
each with one sandbox holding 200 MB, and the rounds alternate between them (ABBA order), so both
see the same load. Each emulator gets its own runc.conf path (TLE_CRIU_RUNC_CONF), so neither
changes /etc/criu/runc.conf, which runc reads for both: compare CRIU options in separate runs.

Run: .venv/bin/python bench/bench_suspend_ab.py OLD_TREE NEW_TREE [--rounds N]
(each tree is a checkout with its agent built: build/agent/tle-agent).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tensorlake.sandbox import Sandbox  # noqa: E402

from bench._common import machine  # noqa: E402
from sdk_shim.launcher import EmulatorProcess, free_port  # noqa: E402

HEAP = "import os, time\nblob = os.urandom(200 << 20)\nprint('ready', flush=True)\nwhile True: time.sleep(1)\n"
T = 120.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trees", nargs=2)
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    trees = {Path(t).resolve().name or t: str(Path(t).resolve()) for t in args.trees}
    emus: dict[str, EmulatorProcess] = {}
    sbs: dict[str, Sandbox] = {}
    res: dict[str, dict[str, list[float]]] = {k: {"suspend": [], "resume": []} for k in trees}
    print(f"# suspend/resume A/B — {machine()}, load {os.getloadavg()[0]:.2f}, {args.rounds} rounds")
    try:
        for key, tree in trees.items():
            data = Path(tempfile.mkdtemp(prefix="tle-bench-ab-"))
            emus[key] = EmulatorProcess(data_dir=data, api_port=free_port(), proxy_port=free_port(), extra_env={
                "TLE_CHECKPOINT": "runc", "PYTHONPATH": tree, "TLE_WARM_RESERVE": "0",
                "TLE_CRIU_RUNC_CONF": str(data / "runc.conf")}).start()
            sb = Sandbox.create(name=f"ab-{os.getpid()}", cpus=1.0, memory_mb=1024, api_url=emus[key].api_url,
                                request_timeout=T)
            pid = sb.start_process("python3", ["-c", HEAP]).pid
            while not any("ready" in ln for ln in sb.get_stdout(pid).lines):
                time.sleep(0.1)
            sbs[key] = sb
        order = list(trees)
        for r in range(args.rounds):
            for key in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                sbs[key].suspend(timeout=T, poll_interval=0.05)
                t1 = time.perf_counter()
                sbs[key].resume(timeout=T, poll_interval=0.05)
                res[key]["suspend"].append(t1 - t0)
                res[key]["resume"].append(time.perf_counter() - t1)
                time.sleep(0.3)
        for key in trees:
            print(key, "; ".join(f"{op} median {statistics.median(v):.3f}s, max {max(v):.3f}s"
                                 for op, v in res[key].items()))
        print(f"load after: {os.getloadavg()[0]:.2f}")
    finally:
        for sb in sbs.values():
            sb.terminate()
        for emu in emus.values():
            emu.stop()
            shutil.rmtree(emu.data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

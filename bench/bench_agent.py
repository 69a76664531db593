"""The in-sandbox agent's footprint and speed (issue 13): idle sandbox memory (the container's cgroup
memory.usage_in_bytes / memory.current after 2 s idle), the agent's RSS, create -> running p50 (warm reserve
off, so every create starts a container and its agent), and run("true") p50.

Run: .venv/bin/python bench/bench_agent.py   (before/after: run it from a checkout of each version)
"""

from __future__ import annotations

import glob
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import docker, fmt, machine, pct, run_true_times, start_emulator, stop_emulator  # noqa: E402

emu = start_emulator({"TLE_WARM_RESERVE": "0"})
from tensorlake.sandbox import Sandbox  # noqa: E402


def cgroup_memory(cid: str) -> int:
    """Bytes the container's memory cgroup charges (v1 memory.usage_in_bytes, else v2 memory.current)."""
    for pattern in (f"/sys/fs/cgroup/memory/docker/{cid}*/memory.usage_in_bytes",
                    f"/sys/fs/cgroup/memory/system.slice/docker-{cid}*.scope/memory.usage_in_bytes",
                    f"/sys/fs/cgroup/system.slice/docker-{cid}*.scope/memory.current",
                    f"/sys/fs/cgroup/docker/{cid}*/memory.current"):
        for path in glob.glob(pattern):
            return int(Path(path).read_text())
    raise RuntimeError(f"no memory cgroup found for {cid}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    try:
        print(f"machine: {machine()}")
        creates, kept = [], []
        for _ in range(10):
            t0 = time.perf_counter()
            sb = Sandbox.create(cpus=1.0, memory_mb=1024, request_timeout=120)
            creates.append(time.perf_counter() - t0)
            kept.append(sb)
        sb = kept[0]
        time.sleep(2)
        mems, rss = [], []
        for s in kept:
            cid = docker("inspect", "-f", "{{.Id}}", f"tle-{s.sandbox_id}")
            mems.append(cgroup_memory(cid))
            rss.append(rss_kib(int(docker("inspect", "-f", "{{.State.Pid}}", cid))))
        for s in kept[1:]:
            s.terminate()
        runs = run_true_times(sb, 100)
        sb.terminate()
        print(f"idle sandbox cgroup memory after 2 s: p50 {pct(mems, 50) / 2**20:.2f} MiB "
              f"(min {min(mems) / 2**20:.2f}, max {max(mems) / 2**20:.2f}, n={len(mems)})")
        print(f"agent (PID 1) RSS: p50 {pct(rss, 50) / 1024:.2f} MiB")
        print(f"SDK create -> running, warm reserve off: {fmt(creates)}")
        print(f"SDK run('true'):                         {fmt(runs)}")
    finally:
        stop_emulator(emu)


if __name__ == "__main__":
    main()

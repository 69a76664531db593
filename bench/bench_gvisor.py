"""gVisor (runsc) next to runc, through the SDK, and next to raw `docker run --runtime=...` (docs/gvisor.md).

One emulator (no warm reserve, so every create starts a container); the runtime of each sandbox is picked
by its image suffix (`+runc` / `+runsc`). Per runtime: create-to-running, `run("true")`, a 16 MiB file
written and read back, suspend+resume and a memory checkpoint restored into a new sandbox (CRIU for runc,
gVisor's own checkpoint for runsc: a sandbox with internet access runs on gVisor's network stack, Docker runtime
runsc-netstack), and the raw Docker baseline of a create+start and of `docker exec true` under the Docker
runtime the SDK's sandbox gets. Prints a Markdown table of medians.

Run: .venv/bin/python bench/bench_gvisor.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import BENCH_LABEL, IMAGE, docker, machine, start_emulator, stop_emulator  # noqa: E402

emu = start_emulator({"TLE_WARM_RESERVE": "0"})
from tensorlake.sandbox import CheckpointType, Sandbox  # noqa: E402  (after TENSORLAKE_API_URL)

T = 120.0
MiB = 1024 * 1024


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def med(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms" if values else "-"


def raw(runtime: str, runs: int) -> tuple[list[float], list[float]]:
    """`docker run -d` (create+start) and `docker exec true` of the same image under `runtime`."""
    starts, execs = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        cid = docker("run", "-d", "--runtime", runtime, "--label", BENCH_LABEL, "--cpus", "1", "--memory", "1g",
                     IMAGE, "sleep", "300")
        starts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        docker("exec", cid, "true")
        execs.append(time.perf_counter() - t0)
        docker("rm", "-f", cid)
    return starts, execs


def through_sdk(runtime: str, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in ("create", "run", "write", "read", "suspend", "resume",
                                                   "checkpoint", "restore")}
    image = f"{IMAGE}+{runtime}"
    for _ in range(runs):
        t0 = time.perf_counter()
        sb = Sandbox.create(image=image, cpus=1.0, memory_mb=1024, request_timeout=T)
        out["create"].append(time.perf_counter() - t0)
        sb.terminate()
    sb = Sandbox.create(name=f"bench-{runtime}-{int(time.time())}", image=image, cpus=1.0, memory_mb=1024,
                        request_timeout=T)
    try:
        assert sb.info().runtime == runtime
        for _ in range(runs * 4):
            out["run"].append(timed(lambda: sb.run("true")))
        blob = b"x" * (16 * MiB)
        for _ in range(runs):
            out["write"].append(timed(lambda: sb.write_file("/srv/blob", blob)))
            out["read"].append(timed(lambda: sb.read_file("/srv/blob")))
        for _ in range(runs):
            out["suspend"].append(timed(lambda: sb.suspend(timeout=T)))
            out["resume"].append(timed(lambda: sb.resume(timeout=T)))
            t0 = time.perf_counter()
            snap = sb.checkpoint(timeout=T, checkpoint_type=CheckpointType.MEMORY)
            out["checkpoint"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            new = Sandbox.create(snapshot_id=snap.snapshot_id, request_timeout=T)
            out["restore"].append(time.perf_counter() - t0)
            new.terminate()
            Sandbox.delete_snapshot(snap.snapshot_id, request_timeout=T)
    finally:
        sb.terminate()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    runs = ap.parse_args().runs
    rows = []
    try:
        for runtime in ("runc", "runsc"):
            # the Docker runtime of an SDK sandbox with internet access (docs/gvisor.md)
            r_start, r_exec = raw("runsc-netstack" if runtime == "runsc" else runtime, runs)
            s = through_sdk(runtime, runs)
            mb_s = lambda xs: f"{16 / statistics.median(xs):.0f} MB/s"  # noqa: E731
            rows.append((runtime, med(r_start), med(s["create"]), med(r_exec), med(s["run"]), mb_s(s["write"]),
                         mb_s(s["read"]), med(s["suspend"]) + " / " + med(s["resume"]),
                         med(s["checkpoint"]) + " / " + med(s["restore"])))
    finally:
        stop_emulator(emu)
    print(f"machine: {machine()}; medians of {runs} runs ({runs * 4} for run); sandbox 1 cpu / 1024 MB")
    print("| runtime | raw `docker run -d` | SDK create | raw `docker exec true` | SDK `run(\"true\")` | "
          "write 16 MiB | read 16 MiB | suspend / resume | checkpoint / restore into new |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("memory checkpoints: CRIU for runc, gVisor's own for runsc (Docker runtime runsc-netstack: docs/gvisor.md)")


if __name__ == "__main__":
    main()

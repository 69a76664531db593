"""Suspend, resume, checkpoint and restore-into-new through the SDK, next to raw Docker checkpoints
and a plain `criu dump` of the same workload, for an idle sandbox, one holding a 200 MB heap, and one
running tests/fidelity_workload.py (established and half-closed TCP, unix sockets, three kinds of
file lock, inotify, timerfd/eventfd/signalfd, epoll, shared memory, memfd, a 3 MB deleted-but-open
file, pipes, a FIFO, a zombie, threads), so the cost of the CRIU options those need is visible. The
plain-criu baseline runs only for the first two: the resources workload binds ports and SysV shared
memory that a host process would share with the host.

Run: .venv/bin/python bench/bench_checkpoint.py [--runs N] [--mechanisms docker,runc]
(each mechanism gets its own emulator, started with TLE_CHECKPOINT=<mechanism>).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import BENCH_LABEL, IMAGE, docker, machine  # noqa: E402
from emulator.checkpoints import containerd_leftovers  # noqa: E402
from sdk_shim.launcher import EmulatorProcess, free_port  # noqa: E402

API_PORT, PROXY_PORT = free_port(), free_port()
os.environ["TENSORLAKE_API_URL"] = f"http://localhost:{API_PORT}"
from tensorlake.sandbox import CheckpointType, Sandbox  # noqa: E402  (after TENSORLAKE_API_URL is set)

HEAP_MB = 200
# Random bytes, so neither zero-page elision nor any compression makes the dump small.
HEAP = f"import os, time\nblob = os.urandom({HEAP_MB} << 20)\nprint('ready', flush=True)\nwhile True: time.sleep(1)\n"
IDLE = "import time\nprint('ready', flush=True)\nwhile True: time.sleep(1)\n"
RESOURCES = (Path(__file__).resolve().parent.parent / "tests" / "fidelity_workload.py").read_text()
T = 120.0


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def wait_ready(sb: Sandbox, pid: int) -> None:
    deadline = time.monotonic() + 60
    while not any("ready" in ln for ln in sb.get_stdout(pid).lines):
        if time.monotonic() > deadline:
            raise RuntimeError("workload did not start")
        time.sleep(0.1)


def timed(fn, *args, **kwargs) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def bench_emulator(mechanism: str, workload: str, runs: int) -> dict[str, float]:
    data_dir = Path(tempfile.mkdtemp(prefix="tle-bench-cp-"))
    emu = EmulatorProcess(data_dir=data_dir, api_port=API_PORT, proxy_port=PROXY_PORT,
                          extra_env={"TLE_CHECKPOINT": mechanism}).start()
    res: dict[str, list[float]] = {"suspend": [], "resume": [], "checkpoint": [], "restore_new": [],
                                   "size_mb": []}
    try:
        sb = Sandbox.create(name=f"bench-{os.getpid()}", cpus=1.0, memory_mb=1024, request_timeout=T)
        p = sb.start_process("python3", ["-c", workload])
        wait_ready(sb, p.pid)
        for _ in range(runs):
            res["suspend"].append(timed(lambda: sb.suspend(timeout=T, poll_interval=0.05)))
            res["resume"].append(timed(lambda: sb.resume(timeout=T, poll_interval=0.05)))
            assert sb.get_process(p.pid).status == "running"
            t0 = time.perf_counter()
            snap = sb.checkpoint(timeout=T, poll_interval=0.05, checkpoint_type=CheckpointType.MEMORY)
            res["checkpoint"].append(time.perf_counter() - t0)
            assert snap is not None
            info = Sandbox.get_snapshot(snap.snapshot_id, request_timeout=T)
            res["size_mb"].append((info.size_bytes or 0) / 2**20)
            t0 = time.perf_counter()
            new = Sandbox.create(snapshot_id=snap.snapshot_id, request_timeout=T)
            res["restore_new"].append(time.perf_counter() - t0)
            assert new.get_process(p.pid).status == "running"
            new.terminate()
            Sandbox.delete_snapshot(snap.snapshot_id, request_timeout=T)
        sb.terminate()
    finally:
        emu.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {k: med(v) for k, v in res.items()}


def docker_root() -> Path:
    return Path(docker("info", "-f", "{{.DockerRootDir}}"))


def bench_raw_docker(workload: str, runs: int) -> dict[str, float]:
    cid = docker("run", "-d", "--label", BENCH_LABEL, "--cpus", "1", "--memory", "1g", "--memory-swap", "1g",
                 IMAGE, "python3", "-c", workload)
    out: dict[str, list[float]] = {"dump_stop": [], "restore": [], "dump_leave_running": [], "size_mb": []}
    try:
        deadline = time.monotonic() + 60
        while "ready" not in subprocess.run(["docker", "logs", cid], capture_output=True, text=True).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("raw workload did not start")
            time.sleep(0.1)
        for i in range(runs):
            out["dump_stop"].append(timed(docker, "checkpoint", "create", cid, f"s{i}"))
            dump = docker_root() / "containers" / cid / "checkpoints" / f"s{i}"
            out["size_mb"].append(sum(f.stat().st_size for f in dump.iterdir()) / 2**20)
            # containerd keeps a copy of every restored checkpoint in /tmp; the nonce finds ours afterwards
            nonce = uuid.uuid4().hex
            (dump / containerd_leftovers.NONCE_FILE).write_text(nonce)
            out["restore"].append(timed(docker, "start", "--checkpoint", f"s{i}", cid))
            containerd_leftovers.remove_copy_of(nonce)
            docker("checkpoint", "rm", cid, f"s{i}")
            out["dump_leave_running"].append(timed(
                docker, "checkpoint", "create", "--leave-running", cid, f"l{i}"))
            docker("checkpoint", "rm", cid, f"l{i}")
    finally:
        docker("rm", "-f", cid)
    return {k: med(v) for k, v in out.items()}


def bench_plain_criu(workload: str, runs: int) -> dict[str, float]:
    """`criu dump` of the same Python process on the host (no container, no engine)."""
    proc = subprocess.Popen(["python3", "-c", workload], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    out: dict[str, list[float]] = {"dump_leave_running": [], "dump_stop": [], "restore": []}
    work = Path(tempfile.mkdtemp(prefix="tle-bench-criu-"))
    try:
        assert proc.stdout is not None and b"ready" in proc.stdout.readline()
        proc.stdout.close()
        for i in range(runs):
            d = work / f"lr{i}"
            d.mkdir()
            out["dump_leave_running"].append(timed(
                subprocess.run, ["criu", "dump", "-t", str(proc.pid), "-D", str(d), "--leave-running", "--shell-job"],
                check=True, capture_output=True))
            shutil.rmtree(d)
        d = work / "stop"
        d.mkdir()
        out["dump_stop"].append(timed(
            subprocess.run, ["criu", "dump", "-t", str(proc.pid), "-D", str(d), "--shell-job"], check=True,
            capture_output=True))
        proc.wait(10)
        out["restore"].append(timed(
            subprocess.run, ["criu", "restore", "-D", str(d), "--shell-job", "-d"], check=True, capture_output=True))
        # The restored process has the same pid; it is ours, end it.
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    return {k: med(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mechanisms", default=os.environ.get("BENCH_MECHANISMS", "runc,docker"))
    ap.add_argument("--only", default="", help="comma-separated workloads: idle,200,resources (default: all)")
    args = ap.parse_args()
    print(f"# checkpoint benchmark — {machine()}, docker {docker('version', '-f', '{{.Server.Version}}')}, "
          f"medians of {args.runs} runs, sandbox 1 cpu / 1024 MB")
    workloads = [("idle", IDLE), (f"{HEAP_MB} MB heap", HEAP), ("resources", RESOURCES)]
    for label, workload in workloads:
        if args.only and label.split()[0] not in args.only.split(","):
            continue
        raw = bench_raw_docker(workload, args.runs)
        crit = bench_plain_criu(workload, args.runs) if workload is not RESOURCES else None
        print(f"\n## {label}")
        print(f"raw docker: checkpoint create {raw['dump_stop']:.2f}s, start --checkpoint {raw['restore']:.2f}s, "
              f"checkpoint --leave-running {raw['dump_leave_running']:.2f}s, dump {raw['size_mb']:.0f} MB")
        if crit is not None:
            print(f"plain criu (host process): dump --leave-running {crit['dump_leave_running']:.2f}s, "
                  f"dump {crit['dump_stop']:.2f}s, restore {crit['restore']:.2f}s")
        for mech in args.mechanisms.split(","):
            em = bench_emulator(mech, workload, args.runs)
            rt = em["suspend"] + em["resume"]
            print(f"emulator [{mech}]: suspend {em['suspend']:.2f}s, resume {em['resume']:.2f}s "
                  f"(together {rt:.2f}s), checkpoint {em['checkpoint']:.2f}s, restore-into-new "
                  f"{em['restore_new']:.2f}s, snapshot size {em['size_mb']:.0f} MB")
            ratios = (f"  ratios: suspend+resume / raw docker stop+start = "
                      f"{rt / (raw['dump_stop'] + raw['restore']):.2f}; checkpoint / raw leave-running = "
                      f"{em['checkpoint'] / raw['dump_leave_running']:.2f}")
            if crit is not None:
                ratios += (f"; checkpoint / plain criu dump = {em['checkpoint'] / crit['dump_leave_running']:.1f}"
                           f"; suspend / plain criu dump = {em['suspend'] / crit['dump_stop']:.1f}"
                           f"; resume / plain criu restore = {em['resume'] / crit['restore']:.1f}")
            print(ratios)


if __name__ == "__main__":
    main()

"""Issue 13 part 1 figures, in one run: an idle sandbox's cgroup memory next to a raw `docker run` of a
sleeping static binary, the agent's start (create-to-running on the cold path, and container start to
agent answer), run("true") p50 through the SDK, and a 50 MB file up and down through the SDK in MiB/s
with the emulator's RSS before and after.

Images: the default and, when the emulator's agent runs in them (the static agent), the offline test
images without Python (tests/images_offline.py). Run: .venv/bin/python bench/bench_any_image.py
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (  # noqa: E402
    BENCH_LABEL,
    docker,
    fmt,
    machine,
    run_true_times,
    start_emulator,
    stop_emulator,
)

emu = start_emulator({"TLE_WARM_RESERVE": "0"})  # the cold path: every create starts an agent
from tensorlake.sandbox import Sandbox  # noqa: E402  (after TENSORLAKE_API_URL)
from tensorlake.sandbox.exceptions import SandboxError  # noqa: E402

from tests import images_offline  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PY_AGENT = Path(os.environ.get("TLE_BENCH_PY_AGENT", "/work/main/emulator/agent"))  # absent: not compared
IDLE_S = 5.0  # settle time before reading an idle container's memory
MiB = 2**20


def cgroup_usage(container: str) -> int:
    """Bytes in the container's cgroup v1 memory.usage_in_bytes (cgroupfs driver: docker/<full id>)."""
    cid = docker("inspect", "-f", "{{.Id}}", container)
    return int(Path(f"/sys/fs/cgroup/memory/docker/{cid}/memory.usage_in_bytes").read_text())


def rss(pid: int | None) -> int:
    """VmRSS of pid in bytes (0 when unknown)."""
    if pid is None:
        return 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def raw_sleeper(image: str, command: list[str]) -> tuple[float, int]:
    """(start seconds, idle cgroup bytes) of a raw `docker run -d` of `command`, removed afterwards."""
    t0 = time.perf_counter()
    cid = docker("run", "-d", "--label", BENCH_LABEL, "--memory", "256m", image, *command)
    dt = time.perf_counter() - t0
    time.sleep(IDLE_S)
    used = cgroup_usage(cid)
    docker("rm", "-f", cid)
    return dt, used


def agent_start(command: list[str], runs: int = 10) -> list[float]:
    """Seconds from spawning the agent on the host to its first 200 on /api/v1/health over its unix socket
    (the agent's own start, without the container's; each run a fresh process, stopped afterwards)."""
    out = []
    for _ in range(runs):
        folder = Path(tempfile.mkdtemp(prefix="tle-bench-agent-"))
        sock = folder / "agent.sock"
        t0 = time.perf_counter()
        proc = subprocess.Popen([*command, "--socket", str(sock)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            while not _healthy(sock):
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError(f"{command[0]} did not answer within 10 s")
                time.sleep(0.0005)
            out.append(time.perf_counter() - t0)
        finally:
            proc.terminate()
            proc.wait(5)
            shutil.rmtree(folder, ignore_errors=True)
    return out


def _healthy(sock: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(sock))
            c.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            return c.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def per_image(label: str, image: str | None, n: int = 5) -> None:
    creates, mems = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            sb = Sandbox.create(image=image, cpus=1.0, memory_mb=256, request_timeout=120)
        except SandboxError as exc:
            print(f"{label:<10} cannot hold a sandbox with this agent: {str(exc)[:160]}")
            return
        creates.append(time.perf_counter() - t0)
        container = f"tle-{sb.sandbox_id}"
        time.sleep(IDLE_S)
        mems.append(cgroup_usage(container))
        sb.terminate()
    print(f"{label:<10} create-to-running {fmt(creates)}")
    print(f"{'':<10} idle cgroup memory median {statistics.median(mems) / MiB:5.1f} MiB "
          f"(min {min(mems) / MiB:.1f}, max {max(mems) / MiB:.1f})")


class RssSampler:
    """The peak VmRSS of a process, sampled every 10 ms on a thread while the block runs."""

    def __init__(self, pid: int | None) -> None:
        self.pid, self.peak, self._stop = pid, rss(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _rates(size: int, secs: list[float]) -> str:
    return f"best {size / min(secs) / MiB:5.0f} MiB/s, median {size / statistics.median(secs) / MiB:5.0f} MiB/s"


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of pid so far (all its threads), 0 when unknown."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def transfers(sb: Sandbox, label: str, rounds: int = 3, pid: int | None = None) -> None:
    """50 MB up (upload_file from a local file, write_file from bytes) and down (read_file) through `sb`;
    with `pid`, also that process's CPU seconds per transfer (what the emulator itself spends: a figure
    that a loaded machine does not distort the way it distorts wall times)."""
    size = 50 * MiB
    data = os.urandom(size)
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
    ups, writes, downs = [], [], []
    cpu: dict[str, list[float]] = {"upload_file": [], "write_file": [], "read_file": []}
    try:
        for _ in range(rounds):
            c0, t0 = cpu_seconds(pid), time.perf_counter()
            sb.upload_file(f.name, "/tmp/big.bin")
            ups.append(time.perf_counter() - t0)
            c1, t0 = cpu_seconds(pid), time.perf_counter()
            sb.write_file("/tmp/big2.bin", data)
            writes.append(time.perf_counter() - t0)
            c2, t0 = cpu_seconds(pid), time.perf_counter()
            got = sb.read_file("/tmp/big.bin").value
            downs.append(time.perf_counter() - t0)
            c3 = cpu_seconds(pid)
            for key, spent in (("upload_file", c1 - c0), ("write_file", c2 - c1), ("read_file", c3 - c2)):
                cpu[key].append(spent)
            assert len(got) == size
            del got
    finally:
        os.unlink(f.name)
    print(f"{label}: upload_file {_rates(size, ups)};  write_file {_rates(size, writes)};  "
          f"read_file {_rates(size, downs)}")
    if pid is not None:
        print("  emulator CPU per 50 MB (median): " + ", ".join(
            f"{k} {statistics.median(v):.3f} s (one core: {size / max(statistics.median(v), 1e-3) / MiB:.0f} MiB/s)"
            for k, v in cpu.items()))


def dataplane(image: str | None) -> None:
    sb = Sandbox.create(image=image, cpus=1.0, memory_mb=1024, request_timeout=120)
    try:
        times = run_true_times(sb, 200)
        print(f"run('true') x200: {fmt(times)}")
        before = rss(emu.pid)
        with RssSampler(emu.pid) as sampler:
            transfers(sb, "50 MB through the emulator", pid=emu.pid)
        print(f"emulator RSS: before {before / MiB:.0f} MiB, peak {sampler.peak / MiB:.0f} MiB, "
              f"after {rss(emu.pid) / MiB:.0f} MiB")
        with sink() as port:
            transfers(Sandbox.connect(sb.sandbox_id, proxy_url=f"http://localhost:{port}", request_timeout=60),
                      "50 MB to a null HTTP server (the SDK's own ceiling)")
    finally:
        sb.terminate()


@contextlib.contextmanager
def sink() -> Iterator[int]:
    """A minimal HTTP/1.1 server on the loopback that swallows request bodies and answers a GET with 50 MB:
    what the SDK's own client reaches with no proxy and no agent behind it."""
    body = os.urandom(50 * MiB)
    srv = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        f = conn.makefile("rb", buffering=MiB)
        with conn, f:
            while head := _head(f):
                if b"content-length:" in head.lower():
                    n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    while n > 0:
                        n -= len(f.read(min(n, 4 * MiB)))
                elif b"transfer-encoding: chunked" in head.lower():
                    while (size := int(f.readline().split(b";")[0], 16)) != 0:
                        f.read(size + 2)
                    f.readline()
                if head.startswith(b"GET"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(body))
                    conn.sendall(body)
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


def _head(f: Any) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline()
        if not line:
            return b""
        head += line
    return head


def main() -> None:
    try:
        print(f"machine: {machine()}")
        binary = images_offline.binary()
        assert binary.mini is not None
        dt, used = raw_sleeper(binary.ref, [binary.mini, "sleep", "600"])
        print(f"raw docker run of a sleeping static binary: start {dt * 1000:.0f} ms, idle cgroup memory "
              f"{used / MiB:.2f} MiB")
        agent = REPO / "build" / "agent" / "tle-agent"
        if agent.exists():
            print(f"agent start on the host (spawn -> health 200), Go binary: {fmt(agent_start([str(agent)]))}")
        if PY_AGENT.exists():  # the Python agent as main had it, for "no slower than today"
            print(f"agent start on the host, Python agent ({PY_AGENT}): "
                  f"{fmt(agent_start(['python3', '-B', str(PY_AGENT)]))}")
        per_image("default", None)
        for img in (images_offline.busybox(), images_offline.musl(), binary):
            per_image(img.kind, img.ref)
        dataplane(None)
    finally:
        stop_emulator(emu)


if __name__ == "__main__":
    main()

"""Data plane (issue 4): processes, streams, stdin, signals and files through the proxy and the agent."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest
from tensorlake.sandbox import AsyncSandbox, Sandbox
from tensorlake.sandbox.exceptions import RemoteAPIError

from sdk_shim.launcher import EmulatorProcess

T = 60.0


def test_run_exit_codes_and_streams(sb: Sandbox) -> None:
    r = sb.run("sh", ["-c", "echo out; echo err >&2; exit 3"])
    assert (r.exit_code, r.stdout.strip(), r.stderr.strip()) == (3, "out", "err")
    r = sb.run("printenv", ["FOO"], env={"FOO": "bar"}, working_dir="/tmp")
    assert r.stdout.strip() == "bar"
    assert sb.run("pwd", working_dir="/tmp").stdout.strip() == "/tmp"
    r = sb.run("sleep", ["30"], timeout=1)
    assert r.timed_out and r.exit_code == -9


def test_missing_command(sb: Sandbox) -> None:
    r = sb.run("no-such-command-xyz")
    assert r.exit_code == 127 and "no-such-command-xyz" in r.stderr
    with pytest.raises(RemoteAPIError) as err:
        sb.start_process("no-such-command-xyz")
    assert "no-such-command-xyz" in str(err.value)


def test_one_megabyte_output_intact_and_ordered(sb: Sandbox) -> None:
    code = "import sys\nfor i in range(20000): sys.stdout.write('%06d ' % i + 'x' * 44 + '\\n')"
    r = sb.run("python3", ["-c", code])
    lines = r.stdout.split("\n")
    assert len(lines) == 20000
    assert all(ln.startswith(f"{i:06d} ") for i, ln in enumerate(lines))
    assert len(r.stdout) > 1_000_000


def test_background_process_follow_and_output(sb: Sandbox) -> None:
    proc = sb.start_process("python3", ["-c", "import sys,time\nfor i in range(3):\n print(f'tick {i}', flush=True)"
                                                "\n print('e', file=sys.stderr, flush=True)\n time.sleep(0.2)"])
    events = list(sb.follow_output(proc.pid))
    assert [e.line for e in events if e.stream == "stdout"] == ["tick 0", "tick 1", "tick 2"]
    assert [e.line for e in events if e.stream == "stderr"] == ["e", "e", "e"]
    # replay of an exited process
    assert [e.line for e in sb.follow_stdout(proc.pid)] == ["tick 0", "tick 1", "tick 2"]
    assert sb.get_stdout(proc.pid).lines == ["tick 0", "tick 1", "tick 2"]
    assert sb.get_stderr(proc.pid).line_count == 3
    assert len(sb.get_output(proc.pid).lines) == 6
    info = sb.get_process(proc.pid)
    assert info.status == "exited" and info.exit_code == 0
    assert proc.pid in [p.pid for p in sb.list_processes()]


def test_stdin_echo_binary_safe(sb: Sandbox) -> None:
    proc = sb.start_process("cat", stdin_mode="pipe")
    sb.write_stdin(proc.pid, b"hello\n")
    sb.write_stdin(proc.pid, "h\u00e9llo w\u00f6rld\n".encode())
    sb.close_stdin(proc.pid)
    lines = [e.line for e in sb.follow_stdout(proc.pid)]
    assert lines == ["hello", "h\u00e9llo w\u00f6rld"]
    # raw bytes through stdin into a file, checked by hash
    blob = bytes(range(256)) * 64
    proc = sb.start_process("sh", ["-c", "cat > /tmp/stdin.bin"], stdin_mode="pipe")
    sb.write_stdin(proc.pid, blob)
    sb.close_stdin(proc.pid)
    list(sb.follow_output(proc.pid))
    assert sb.read_file("/tmp/stdin.bin").value == blob


def test_signal_stops_http_server_and_kill(sb: Sandbox) -> None:
    proc = sb.start_process("python", ["-m", "http.server", "8080"])
    time.sleep(0.5)
    sb.send_signal(proc.pid, signal.SIGTERM)
    list(sb.follow_output(proc.pid))
    info = sb.get_process(proc.pid)
    assert info.status == "signaled" and info.signal == signal.SIGTERM
    proc = sb.start_process("sleep", ["300"])
    sb.kill_process(proc.pid)
    deadline = time.time() + 10
    while sb.get_process(proc.pid).status == "running" and time.time() < deadline:
        time.sleep(0.1)
    assert sb.get_process(proc.pid).status == "signaled"
    with pytest.raises(RemoteAPIError):
        sb.get_process(999999)


def test_managed_process_restart(sb: Sandbox) -> None:
    proc = sb.start_process("sleep", ["300"], name="napper")
    assert proc.managed is not None
    again = sb.get_process("napper")
    assert again.pid == proc.pid
    restarted = sb.restart_process("napper")
    assert restarted.pid != proc.pid
    sb.kill_process("napper")


def test_twenty_processes_at_once(sb: Sandbox) -> None:
    procs = [sb.start_process("sh", ["-c", f"sleep 0.5; exit {i}"]) for i in range(20)]
    deadline = time.time() + 30
    for i, p in enumerate(procs):
        while (info := sb.get_process(p.pid)).status == "running" and time.time() < deadline:
            time.sleep(0.1)
        assert info.exit_code == i


def test_oom_killed_process_reports_it(emulator: EmulatorProcess) -> None:
    with Sandbox.create(memory_mb=128, request_timeout=T) as small:
        r = small.run("python3", ["-c", "b = bytearray(600 * 1024 * 1024)"], timeout=60)
        assert r.exit_code == -9
        assert r.reason == "oom_killed"
        assert small.run("true").exit_code == 0


def test_files_roundtrip_paths_and_errors(sb: Sandbox) -> None:
    data = os.urandom(100_000)
    path = "/workspace/dir with spaces/\u00fcnic\u00f6de \u2603.bin"
    sb.write_file(path, data)
    assert sb.read_file(path).value == data
    listing = sb.list_directory("/workspace/dir with spaces").value
    entry = next(e for e in listing.entries if e.name == "\u00fcnic\u00f6de \u2603.bin")
    assert entry.is_dir is False and entry.size == len(data) and entry.modified_at is not None
    root = sb.list_directory("/workspace").value
    assert any(e.name == "dir with spaces" and e.is_dir for e in root.entries)
    sb.delete_file(path)
    for bad in (lambda: sb.read_file(path), lambda: sb.delete_file(path)):
        with pytest.raises(RemoteAPIError) as err:
            bad()
        assert "404" in str(err.value) or "not found" in str(err.value).lower()
    for bad in (lambda: sb.read_file("relative/path.txt"), lambda: sb.read_file("/workspace"),
                lambda: sb.write_file("/workspace", b"x"), lambda: sb.list_directory("/etc/hostname")):
        with pytest.raises(RemoteAPIError):
            bad()


def test_fifty_megabyte_file_round_trip_memory_flat(sb: Sandbox, emulator: EmulatorProcess, tmp_path) -> None:
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(50):
            f.write(os.urandom(1024 * 1024))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert emulator.pid is not None
    rss_before = _rss_kb(emulator.pid)
    sb.upload_file(str(src), "/workspace/big.bin")
    got = sb.read_file("/workspace/big.bin").value
    rss_after = _rss_kb(emulator.pid)
    assert hashlib.sha256(got).hexdigest() == digest
    remote = sb.run("sha256sum", ["/workspace/big.bin"]).stdout.split()[0]
    assert remote == digest
    # the emulator streams: its resident memory must not grow by anything like the file size
    assert rss_after - rss_before < 25 * 1024, (rss_before, rss_after)


def _rss_kb(pid: int) -> int:
    out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True).stdout
    return int(out.strip() or 0)


def test_many_concurrent_follows_do_not_block(sb: Sandbox) -> None:
    code = "import time\nfor i in range(5):\n print(i, flush=True)\n time.sleep(0.3)"
    proc = sb.start_process("python3", ["-c", code])
    results: list[list[str]] = []

    def follow() -> None:
        conn = Sandbox.connect(sb.sandbox_id, request_timeout=T)
        results.append([e.line for e in conn.follow_stdout(proc.pid)])

    threads = [threading.Thread(target=follow) for _ in range(10)]
    start = time.time()
    for t in threads:
        t.start()
    assert sb.run("echo", ["not blocked"]).stdout.strip() == "not blocked"
    for t in threads:
        t.join(30)
    assert len(results) == 10 and all(r == ["0", "1", "2", "3", "4"] for r in results)
    assert time.time() - start < 15


def test_health_and_daemon_info(sb: Sandbox) -> None:
    assert sb.health().healthy is True
    info = sb.daemon_info()
    assert info.version and info.total_processes >= 1


# ---- the product page (shared/seeds), verbatim, async and sync ------------------------------------


async def test_seed_page_async(emulator: EmulatorProcess) -> None:
    sandbox = await AsyncSandbox.create(cpus=2.0, memory_mb=2048)
    try:
        result = await sandbox.run("python", ["-c", "print('hello')"])
        assert result.stdout.strip() == "hello"
        await sandbox.write_file("/workspace/data.csv", b"name,score\nAlice,95\n")
        content = await sandbox.read_file("/workspace/data.csv")
        assert content.value.decode("utf-8") == "name,score\nAlice,95\n"
        listing = await sandbox.list_directory("/workspace")
        assert [(e.name, e.is_dir, e.size) for e in listing.value.entries if e.name == "data.csv"] == [
            ("data.csv", False, 20)]
        proc = await sandbox.start_process("python", ["-c", """
import time
for i in range(5):
    print(f'tick {i}')
    time.sleep(1)
"""])
        events = await sandbox.follow_output(proc.pid)
        assert "".join(event.line for event in events) == "".join(f"tick {i}" for i in range(5))
        proc = await sandbox.start_process("python", ["-m", "http.server", "8080"])
        await sandbox.send_signal(proc.pid, signal.SIGTERM)
    finally:
        await sandbox.terminate()

    async with await AsyncSandbox.create(cpus=2.0, memory_mb=2048) as sandbox:
        result = await sandbox.run("python", ["-c", "print('hello')"])
        assert result.stdout == "hello"

    async def evaluate(prompt: str) -> str:
        async with await AsyncSandbox.create(cpus=1.0, memory_mb=1024) as sandbox:
            result = await sandbox.run("python", ["-c", prompt])
            return result.stdout

    prompts = ["print(2 + 2)", "print(sum(range(100)))", "import math; print(math.pi)"]
    outputs = await asyncio.gather(*(evaluate(p) for p in prompts))
    assert [out.strip() for out in outputs] == ["4", "4950", "3.141592653589793"]


def test_seed_page_sync(emulator: EmulatorProcess) -> None:
    sandbox = Sandbox.create(cpus=2.0, memory_mb=2048)
    try:
        result = sandbox.run("python", ["-c", "print('hello')"])
        assert result.stdout.strip() == "hello"
        sandbox.write_file("/workspace/data.csv", b"name,score\nAlice,95\n")
        content = sandbox.read_file("/workspace/data.csv")
        assert content.value.decode("utf-8") == "name,score\nAlice,95\n"
        listing = sandbox.list_directory("/workspace")
        assert any(e.name == "data.csv" and e.size == 20 for e in listing.value.entries)
        proc = sandbox.start_process("python", ["-c", "import time\nfor i in range(3):\n print(f'tick {i}')"])
        assert [e.line for e in sandbox.follow_output(proc.pid)] == ["tick 0", "tick 1", "tick 2"]
        proc = sandbox.start_process("python", ["-m", "http.server", "8080"])
        sandbox.send_signal(proc.pid, signal.SIGTERM)
    finally:
        sandbox.terminate()
    with Sandbox.create(cpus=2.0, memory_mb=2048) as sandbox:
        assert sandbox.run("python", ["-c", "print('hello')"]).stdout.strip() == "hello"
    named = Sandbox.create(name=f"my-env-{os.getpid()}", cpus=1.0)
    try:
        again = Sandbox.connect(named.name)
        assert again.info().sandbox_id == named.sandbox_id
    finally:
        named.terminate()


def test_proxy_errors_for_unknown_and_terminated(emulator: EmulatorProcess) -> None:
    import json
    import urllib.error
    import urllib.request

    def get(sid: str) -> tuple[int, dict]:
        req = urllib.request.Request(f"{emulator.proxy_url}/api/v1/health", headers={"X-Tensorlake-Sandbox-Id": sid})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    assert get("nope") == (404, {"error": "Sandbox not found", "code": "SANDBOX_NOT_FOUND"})
    sb = Sandbox.create(request_timeout=T)
    assert get(sb.sandbox_id)[0] == 200
    sb.terminate()
    status, body = get(sb.sandbox_id)
    assert status == 404 and body["code"] == "SANDBOX_NOT_FOUND" and "terminated" in body["error"]
    with pytest.raises(RemoteAPIError):
        sb.run("true")


@pytest.fixture(scope="module")
def empty_image() -> Iterator[str]:
    """An image with nothing in it but /tmp and /workspace: no shell, no libc, no python (made from an empty
    folder with `docker import`, removed afterwards)."""
    name = f"tle-test-empty-{os.getpid()}:latest"
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "tmp"))
        os.makedirs(os.path.join(d, "workspace"))
        tar = subprocess.run(["tar", "-C", d, "-c", "."], capture_output=True, check=True).stdout
        subprocess.run(["docker", "import", "--change", "WORKDIR /workspace",
                        "--change", "LABEL dev.tensorlake-emulator.test=empty-image", "-", name],
                       input=tar, capture_output=True, check=True)
    yield name
    subprocess.run(["docker", "image", "rm", "-f", name], capture_output=True)


def test_agent_needs_nothing_from_the_image(emulator: EmulatorProcess, empty_image: str) -> None:
    """The agent is one static executable mounted from the host (issue 13): a sandbox of an empty image runs,
    answers, spawns (a missing program is the shell-like 127) and serves files."""
    sb = Sandbox.create(image=empty_image, request_timeout=T)
    try:
        r = sb.run("sh", ["-c", "true"])
        assert r.exit_code == 127 and "sh: command not found" in r.stderr
        sb.write_file("/tmp/x.txt", b"no libc needed")
        assert sb.read_file("/tmp/x.txt").value == b"no libc needed"
    finally:
        sb.terminate()

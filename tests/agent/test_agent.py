"""Tests of the in-sandbox agent (the emulator/agent package), run as a real subprocess on the host.

The agent serves HTTP/1.1 on a unix socket; these tests talk to it with httpx over that socket, checking the
exact wire shapes of docs/protocol.md sections 5, 7 and 8. One test also drives the real tensorlake SDK at it
through a tiny TCP-to-unix-socket forwarder (skipped when the SDK is not installed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

# Run as a directory, as in a sandbox (`python3 -B /.tle/agent`).
AGENT = Path(__file__).resolve().parents[2] / "emulator" / "agent"
# The agent must run on python3 >= 3.9; point this at another interpreter to check that.
AGENT_PYTHON = os.environ.get("TLE_AGENT_TEST_PYTHON", sys.executable)


class Agent:
    def __init__(self, env: dict | None = None, prefix: list | None = None):
        self.prefix = prefix or []
        self.dir = tempfile.mkdtemp(prefix="tle-agent-", dir="/tmp")
        self.socket = os.path.join(self.dir, "agent.sock")
        self.workdir = os.path.join(self.dir, "work")
        os.makedirs(self.workdir)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.log_path = os.path.join(self.dir, "agent.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*self.prefix, AGENT_PYTHON, "-B", str(AGENT), "--socket", self.socket],
            cwd=self.workdir,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("agent did not start:\n" + self.log())
            time.sleep(0.02)
        self.client = self.make_client()

    def make_client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket), base_url="http://sandbox", timeout=timeout
        )

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def agent_pid(self) -> int:
        """The agent's host pid (differs from self.proc.pid when it runs under `unshare --fork`)."""
        if not self.prefix:
            return self.proc.pid
        kids = []
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            with open(f"/proc/{self.proc.pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
        assert len(kids) == 1, kids
        return kids[0]

    def terminate(self) -> None:
        os.kill(self.agent_pid(), signal.SIGTERM)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def agent():
    a = Agent()
    yield a
    a.stop()


@pytest.fixture
def client(agent):
    return agent.client


@pytest.fixture
def tmpdir_path():
    d = tempfile.mkdtemp(prefix="tle-agent-files-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ helpers


def parse_sse(text: str) -> list:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith(":") or not line:
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def run(client: httpx.Client, **body) -> tuple:
    r = client.post("/api/v1/processes/run", json=body, headers={"Accept": "text/event-stream"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    exits = [d for n, d in events if n == "exited"]
    assert len(exits) == 1 and events[-1][0] == "exited", events[-3:]
    out = [d["line"] for n, d in events if n == "output" and d["stream"] == "stdout"]
    err = [d["line"] for n, d in events if n == "output" and d["stream"] == "stderr"]
    return out, err, exits[0], events


def start(client: httpx.Client, **body) -> dict:
    r = client.post("/api/v1/processes", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def wait_for(fn, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def wait_exit(client: httpx.Client, ref, timeout: float = 10.0) -> dict:
    def done():
        info = client.get(f"/api/v1/processes/{ref}").json()
        return info if info["status"] != "running" else None

    return wait_for(done, timeout)


def fparams(path: str) -> dict:
    return {"path": path}


# ------------------------------------------------------------------------------------------------ layout


def _agent_modules() -> dict:
    return {p.stem: p for p in sorted(AGENT.glob("*.py"))}


def test_package_layout_is_safe_to_run_as_a_directory():
    """`python3 /.tle/agent` puts the agent's directory first on sys.path: a module named like a stdlib module
    would shadow it for the whole agent, and anything but the stdlib may be missing in the sandbox's image."""
    import ast

    modules = _agent_modules()
    assert "__main__" in modules and not (AGENT / "__init__.py").exists()
    stdlib = set(sys.stdlib_module_names)
    assert not (set(modules) - {"__main__"}) & stdlib
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path), feature_version=(3, 9))  # the oldest python3 supported
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: relative import"
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                assert top in stdlib or top in modules, f"{name} imports {top}: neither stdlib nor the agent's"


# ------------------------------------------------------------------------------------------------ basics


def test_health_and_info(client):
    r = client.get("/api/v1/health")
    assert r.status_code == 200 and r.json() == {"healthy": True}
    assert r.headers["content-type"] == "application/json"
    info = client.get("/api/v1/info").json()
    assert set(info) >= {"version", "uptime_secs", "running_processes", "total_processes"}
    assert isinstance(info["version"], str) and isinstance(info["uptime_secs"], int)


def test_unknown_route_and_method(client):
    r = client.get("/api/v1/nope")
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    r = client.delete("/api/v1/health")
    assert r.status_code == 405 and r.json()["code"] == "METHOD_NOT_ALLOWED"
    r = client.get("/")
    assert r.status_code == 404


def test_bad_json_and_types(client):
    r = client.post("/api/v1/processes", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST"
    r = client.post("/api/v1/processes", json={"command": "echo", "args": "x"})
    assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST"
    r = client.post("/api/v1/processes/run", json={"args": ["x"]})
    assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST"
    r = client.post("/api/v1/processes", json={"command": "echo", "stdin_mode": "weird"})
    assert r.status_code == 400
    r = client.post("/api/v1/processes", json={"command": "echo", "timeout": "1"})
    assert r.status_code == 400
    # the agent is still fine
    assert client.get("/api/v1/health").json() == {"healthy": True}


def test_garbage_request_does_not_kill_agent(agent):
    s = socket.socket(socket.AF_UNIX)
    s.connect(agent.socket)
    s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
    data = s.recv(65536)
    s.close()
    assert b"400" in data.split(b"\r\n")[0]
    assert agent.client.get("/api/v1/health").status_code == 200


def _raw(agent, data: bytes, read_until_close: bool = True) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(agent.socket)
    s.sendall(data)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            if not read_until_close and b"\r\n\r\n" in out:
                break
    finally:
        s.close()
    return out


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /api/v1/processes HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST /api/v1/processes HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"GET /api/v1/processes/%ff%fe HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /api/v1/files?path=%2Ftmp%2F%ff HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /api/v1/health HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"POST /api/v1/processes/1/signal HTTP/1.1\r\nContent-Length: 15\r\nConnection: close\r\n\r\n"
        b'{"signal": 999}',
        b"GET /api/v1/health HTTP/1.0\r\n\r\n",
    ],
)
def test_malformed_requests_are_survived(agent, raw):
    out = _raw(agent, raw)
    if out:
        assert out.startswith(b"HTTP/1.1 ")
    assert agent.client.get("/api/v1/health").json() == {"healthy": True}


def test_expect_100_continue(agent, tmpdir_path):
    p = os.path.join(tmpdir_path, "expect.txt")
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(agent.socket)
    s.sendall(
        f"PUT /api/v1/files?path={p} HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    s.sendall(b"hello")
    assert s.recv(100).startswith(b"HTTP/1.1 204 ")
    s.close()
    assert open(p, "rb").read() == b"hello"


# ------------------------------------------------------------------------------------------------ run


def test_run_stdout_stderr_exit_code(client):
    out, err, ex, events = run(
        client, command="sh", args=["-c", "echo out1; echo err1 >&2; echo out2; exit 3"]
    )
    assert out == ["out1", "out2"]
    assert err == ["err1"]
    assert ex == {"exit_code": 3, "signal": None, "oom_killed": False, "reason": "exited"}
    assert events[0][0] == "started" and isinstance(events[0][1]["pid"], int)
    assert events[0][1]["started_at"] > 1_600_000_000_000
    for name, d in events:
        if name == "output":
            assert isinstance(d["timestamp"], int) and d["timestamp"] > 1_600_000_000_000


def test_run_env_working_dir_and_partial_line(client, tmpdir_path):
    out, _, ex, _ = run(
        client,
        command="sh",
        args=["-c", 'echo "$A-$B"; pwd; test -n "$PATH" && echo haspath; printf "no newline"'],
        env={"A": "1", "B": "two"},
        working_dir=tmpdir_path,
    )
    assert out == ["1-two", os.path.realpath(tmpdir_path), "haspath", "no newline"]
    assert ex["exit_code"] == 0


def test_run_default_working_dir_is_agent_cwd(agent):
    out, _, _, _ = run(agent.client, command="pwd")
    assert out == [os.path.realpath(agent.workdir)]


def test_run_one_megabyte_in_order(client):
    out, err, ex, _ = run(client, command="seq", args=["1", "200000"])
    assert ex["exit_code"] == 0 and err == []
    assert len(out) == 200000
    assert out == [str(i) for i in range(1, 200001)]


def test_run_long_line_and_binary_output(client):
    script = "import sys; sys.stdout.buffer.write(b'x' * 300000 + b'\\n' + b'\\xff\\xfeok\\r\\n')"
    out, _, ex, _ = run(client, command=sys.executable, args=["-c", script])
    assert ex["exit_code"] == 0
    assert out[0] == "x" * 300000
    assert out[1] == "\ufffd\ufffdok\r"


def test_run_timeout_kills_process_group(client, tmpdir_path):
    pidfile = os.path.join(tmpdir_path, "grandchild.pid")
    t0 = time.monotonic()
    out, _, ex, _ = run(
        client,
        command="sh",
        args=["-c", f"sleep 30 & echo $! > {pidfile}; echo started; wait"],
        timeout=0.5,
    )
    assert time.monotonic() - t0 < 5
    assert out == ["started"]
    assert ex["reason"] == "timed_out"
    assert ex["signal"] == 9 and ex["exit_code"] is None
    gpid = int(open(pidfile).read())

    def gone():
        try:
            with open(f"/proc/{gpid}/stat") as f:
                return f.read().split(") ")[1].startswith("Z")
        except FileNotFoundError:
            return True

    wait_for(gone, 5)


def test_run_float_timeout_not_hit(client):
    _, _, ex, _ = run(client, command="true", timeout=5.5)
    assert ex == {"exit_code": 0, "signal": None, "oom_killed": False, "reason": "exited"}


def test_run_signaled(client):
    _, _, ex, _ = run(client, command="sh", args=["-c", "kill -TERM $$"])
    assert ex["signal"] == 15 and ex["exit_code"] is None and ex["reason"] == "signaled"


def test_run_missing_command(client):
    out, err, ex, _ = run(client, command="definitely-not-a-command-xyz")
    assert out == []
    assert len(err) == 1 and "definitely-not-a-command-xyz" in err[0]
    assert ex["exit_code"] == 127 and ex["reason"] == "exited"


def test_run_not_executable(client, tmpdir_path):
    p = os.path.join(tmpdir_path, "script.sh")
    with open(p, "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    os.chmod(p, 0o644)
    _, err, ex, _ = run(client, command=p)
    assert ex["exit_code"] == 126
    assert p in err[0]


def test_run_bad_working_dir(client):
    _, err, ex, _ = run(client, command="true", working_dir="/no/such/dir")
    assert ex["exit_code"] == 127
    assert "/no/such/dir" in err[0]


def test_run_as_current_user(client):
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    out, _, ex, _ = run(client, command="id", args=["-u"], user=me)
    assert ex["exit_code"] == 0 and out == [str(os.getuid())]
    out, _, ex, _ = run(client, command="id", args=["-u"], user={"uid": os.getuid(), "gid": os.getgid()})
    assert ex["exit_code"] == 0 and out == [str(os.getuid())]


def test_run_unknown_user(client):
    _, err, ex, _ = run(client, command="true", user="no-such-user-xyz")
    assert ex["exit_code"] != 0 and "no-such-user-xyz" in err[0]


def test_run_is_fast(client):
    run(client, command="true")
    t0 = time.monotonic()
    for _ in range(20):
        run(client, command="true")
    assert (time.monotonic() - t0) / 20 < 0.1


def test_run_chunked_request_body(client):
    body = json.dumps({"command": "echo", "args": ["chunked"]}).encode()

    def gen():
        yield body[:5]
        yield body[5:]

    r = client.post("/api/v1/processes/run", content=gen())
    events = parse_sse(r.text)
    assert [d["line"] for n, d in events if n == "output"] == ["chunked"]


# ------------------------------------------------------------------------------------------------ processes


def test_start_get_list_kill(client):
    info = start(client, command="sleep", args=["100"])
    pid = info["pid"]
    assert info["status"] == "running" and info["command"] == "sleep" and info["args"] == ["100"]
    assert info["exit_code"] is None and info["signal"] is None and info["stdin_writable"] is False
    assert info["ended_at"] is None and info["started_at"] > 1_600_000_000_000
    assert "managed" not in info
    assert client.get(f"/api/v1/processes/{pid}").json()["pid"] == pid
    listed = client.get("/api/v1/processes").json()["processes"]
    assert pid in [p["pid"] for p in listed]
    assert client.get("/api/v1/info").json()["running_processes"] >= 1
    r = client.delete(f"/api/v1/processes/{pid}")
    assert r.status_code == 204 and r.content == b""
    final = wait_exit(client, pid)
    assert final["status"] == "signaled" and final["signal"] == 9 and final["exit_code"] is None
    assert final["ended_at"] >= final["started_at"]


def test_get_missing_process(client):
    r = client.get("/api/v1/processes/99999999")
    assert r.status_code == 404
    assert r.json() == {"error": "Process 99999999 not found", "code": "NOT_FOUND"}
    assert client.delete("/api/v1/processes/99999999").status_code == 404
    assert client.get("/api/v1/processes/nosuchname/stdout").status_code == 404


def test_signal(client):
    pid = start(client, command="sleep", args=["100"])["pid"]
    r = client.post(f"/api/v1/processes/{pid}/signal", json={"signal": 15})
    assert r.status_code == 200 and r.json() == {"success": True}
    final = wait_exit(client, pid)
    assert final["status"] == "signaled" and final["signal"] == 15
    r = client.post(f"/api/v1/processes/{pid}/signal", json={"signal": "TERM"})
    assert r.status_code == 400


def test_signal_goes_to_process_group(client, tmpdir_path):
    pidfile = os.path.join(tmpdir_path, "gc.pid")
    info = start(client, command="sh", args=["-c", f"sleep 100 & echo $! > {pidfile}; wait"])
    wait_for(lambda: os.path.exists(pidfile) and open(pidfile).read().strip())
    gpid = int(open(pidfile).read())
    client.post(f"/api/v1/processes/{info['pid']}/signal", json={"signal": 9})
    wait_exit(client, info["pid"])

    def gone():
        try:
            with open(f"/proc/{gpid}/stat") as f:
                return f.read().split(") ")[1].startswith("Z")
        except FileNotFoundError:
            return True

    wait_for(gone, 5)


def test_unspawnable_start_process(client):
    r = client.post("/api/v1/processes", json={"command": "no-such-binary-xyz"})
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == "SPAWN_FAILED" and "no-such-binary-xyz" in body["error"]


def test_stdin_echo_with_cat(client):
    info = start(client, command="cat", stdin_mode="pipe")
    pid = info["pid"]
    assert info["stdin_writable"] is True
    assert client.post(f"/api/v1/processes/{pid}/stdin", content=b"hello\n").status_code == 204
    assert client.post(f"/api/v1/processes/{pid}/stdin", content=b"world\npartial").status_code == 204
    r = client.post(f"/api/v1/processes/{pid}/stdin/close")
    assert r.status_code == 204
    final = wait_exit(client, pid)
    assert final["exit_code"] == 0 and final["stdin_writable"] is False
    out = client.get(f"/api/v1/processes/{pid}/stdout").json()
    assert out == {"pid": pid, "lines": ["hello", "world", "partial"], "line_count": 3}


def test_stdin_binary_safe(client, tmpdir_path):
    target = os.path.join(tmpdir_path, "stdin.bin")
    payload = bytes(range(256)) * 4096 + os.urandom(100_000)  # ~1.1 MB, more than a pipe holds
    pid = start(client, command="sh", args=["-c", f"cat > {target}"], stdin_mode="pipe")["pid"]
    assert client.post(f"/api/v1/processes/{pid}/stdin", content=payload).status_code == 204
    assert client.post(f"/api/v1/processes/{pid}/stdin/close").status_code == 204
    assert wait_exit(client, pid)["exit_code"] == 0
    with open(target, "rb") as f:
        assert f.read() == payload


def test_stdin_not_writable(client):
    pid = start(client, command="sleep", args=["100"])["pid"]
    r = client.post(f"/api/v1/processes/{pid}/stdin", content=b"x")
    assert r.status_code == 400 and r.json()["code"] == "STDIN_NOT_WRITABLE"
    client.delete(f"/api/v1/processes/{pid}")


def test_stdout_stderr_output_interleaved(client):
    script = "echo a; sleep 0.05; echo b >&2; sleep 0.05; echo c; sleep 0.05; echo d >&2"
    pid = start(client, command="sh", args=["-c", script])["pid"]
    wait_exit(client, pid)
    assert client.get(f"/api/v1/processes/{pid}/stdout").json() == {
        "pid": pid,
        "lines": ["a", "c"],
        "line_count": 2,
    }
    assert client.get(f"/api/v1/processes/{pid}/stderr").json() == {
        "pid": pid,
        "lines": ["b", "d"],
        "line_count": 2,
    }
    out = client.get(f"/api/v1/processes/{pid}/output").json()
    assert out == {"pid": pid, "lines": ["a", "b", "c", "d"], "line_count": 4}


def test_discard_modes(client):
    pid = start(client, command="sh", args=["-c", "echo o; echo e >&2"], stdout_mode="discard")["pid"]
    wait_exit(client, pid)
    assert client.get(f"/api/v1/processes/{pid}/output").json()["lines"] == ["e"]


def test_follow_replays_exited_process(client):
    pid = start(
        client, command="sh", args=["-c", "echo one; sleep 0.05; echo two >&2; sleep 0.05; echo three"]
    )["pid"]
    wait_exit(client, pid)
    time.sleep(0.05)
    r = client.get(f"/api/v1/processes/{pid}/output/follow", headers={"Accept": "text/event-stream"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    assert [(d["line"], d["stream"]) for n, d in events if n == "output"] == [
        ("one", "stdout"),
        ("two", "stderr"),
        ("three", "stdout"),
    ]
    assert events[-1] == ("eof", {})
    ev = parse_sse(client.get(f"/api/v1/processes/{pid}/stdout/follow").text)
    assert [d["line"] for n, d in ev if n == "output"] == ["one", "three"]
    ev = parse_sse(client.get(f"/api/v1/processes/{pid}/stderr/follow").text)
    assert [d["line"] for n, d in ev if n == "output"] == ["two"]


def test_follow_live_until_exit(client):
    pid = start(client, command="sh", args=["-c", "echo first; sleep 0.4; echo second"])["pid"]
    t0 = time.monotonic()
    events = parse_sse(client.get(f"/api/v1/processes/{pid}/stdout/follow").text)
    assert time.monotonic() - t0 >= 0.3
    assert [d["line"] for n, d in events if n == "output"] == ["first", "second"]
    assert events[-1][0] == "eof"


def test_concurrent_follows_do_not_block(agent):
    script = "for i in $(seq 1 20); do echo line$i; sleep 0.15; done"
    pid = start(agent.client, command="sh", args=["-c", script])["pid"]

    def follow(_):
        with agent.make_client() as c:
            return parse_sse(c.get(f"/api/v1/processes/{pid}/output/follow").text)

    with ThreadPoolExecutor(max_workers=21) as ex:
        futures = [ex.submit(follow, i) for i in range(20)]
        time.sleep(0.3)
        # while 20 streams are open, other requests are answered promptly
        with agent.make_client() as c:
            t0 = time.monotonic()
            assert c.get("/api/v1/health").json() == {"healthy": True}
            assert c.get(f"/api/v1/processes/{pid}").json()["status"] == "running"
            assert time.monotonic() - t0 < 1.5
        results = [f.result(timeout=20) for f in futures]
    for events in results:
        assert [d["line"] for n, d in events if n == "output"] == [f"line{i}" for i in range(1, 21)]
        assert events[-1][0] == "eof"


def test_restart_unmanaged(client):
    info = start(client, command="sleep", args=["100"])
    r = client.post(f"/api/v1/processes/{info['pid']}/restart")
    assert r.status_code == 200
    new = r.json()
    assert new["pid"] != info["pid"] and new["status"] == "running" and new["command"] == "sleep"
    client.delete(f"/api/v1/processes/{new['pid']}")


# ------------------------------------------------------------------------------------------------ managed


def test_managed_process_by_name_restart_and_kill(client):
    info = start(
        client,
        command="sleep",
        args=["100"],
        name="my server",
        restart={"policy": "always", "initial_backoff_ms": 50, "max_backoff_ms": 1000},
    )
    m = info["managed"]
    assert m["id"] == "my server" and m["name"] == "my server"
    assert m["status"] in ("starting", "running") and m["restart_count"] == 0
    assert m["restart"]["policy"] == "always"
    assert m["health_status"] == "disabled" and m["consecutive_health_failures"] == 0
    got = client.get("/api/v1/processes/my%20server").json()
    assert got["pid"] == info["pid"]
    r = client.post("/api/v1/processes/my%20server/restart")
    assert r.status_code == 200
    new = r.json()
    assert new["pid"] != info["pid"] and new["status"] == "running"
    assert client.get(f"/api/v1/processes/{new['pid']}").json()["managed"]["id"] == "my server"
    # a second start with the same name conflicts while it is alive
    r = client.post("/api/v1/processes", json={"command": "true", "name": "my server"})
    assert r.status_code == 409
    # signal kills the current incarnation; policy always brings it back with a new pid
    client.post("/api/v1/processes/my%20server/signal", json={"signal": 9})
    again = wait_for(
        lambda: (
            (i := client.get("/api/v1/processes/my%20server").json())["pid"] != new["pid"]
            and i["status"] == "running"
            and i
        ),
        10,
    )
    assert again["managed"]["restart_count"] >= 2
    assert again["managed"]["last_exit"]["signal"] == 9
    assert client.delete("/api/v1/processes/my%20server").status_code == 204
    final = wait_for(
        lambda: (i := client.get("/api/v1/processes/my%20server").json())["status"] != "running" and i, 15
    )
    assert final["managed"]["status"] == "stopped"
    assert final["signal"] == 15
    time.sleep(0.3)
    assert client.get("/api/v1/processes/my%20server").json()["pid"] == final["pid"]


def test_managed_on_failure_with_max_restarts(client):
    info = start(
        client,
        command="sh",
        args=["-c", "echo run; exit 1"],
        name="crasher",
        restart={"policy": "on_failure", "max_restarts": 2, "initial_backoff_ms": 20, "max_backoff_ms": 100},
    )
    assert info["managed"]["restart"]["max_restarts"] == 2
    final = wait_for(
        lambda: (i := client.get("/api/v1/processes/crasher").json())["managed"]["status"] == "stopped" and i,
        10,
    )
    assert final["managed"]["restart_count"] == 2
    assert final["managed"]["last_exit"]["exit_code"] == 1
    assert final["managed"]["next_restart_at"] is None
    out = client.get("/api/v1/processes/crasher/stdout").json()
    assert out["lines"] == ["run", "run", "run"]
    # follow of a stopped managed process replays and closes
    events = parse_sse(client.get("/api/v1/processes/crasher/output/follow").text)
    assert [d["line"] for n, d in events if n == "output"] == ["run", "run", "run"]
    # a stopped name can be reused
    again = start(client, command="true", name="crasher")
    assert again["managed"]["restart_count"] == 0


def test_managed_on_failure_does_not_restart_success(client):
    start(client, command="true", name="oneshot", restart={"policy": "on_failure", "initial_backoff_ms": 10})
    final = wait_for(
        lambda: (i := client.get("/api/v1/processes/oneshot").json())["managed"]["status"] == "stopped" and i,
        5,
    )
    assert final["managed"]["restart_count"] == 0 and final["exit_code"] == 0


def test_managed_backoff_reported(client):
    start(
        client,
        command="false",
        name="slowback",
        restart={"policy": "always", "initial_backoff_ms": 2000, "max_backoff_ms": 5000},
    )
    info = wait_for(
        lambda: (
            (i := client.get("/api/v1/processes/slowback").json())["managed"]["status"] == "backing_off" and i
        ),
        5,
    )
    assert info["managed"]["next_restart_at"] > int(time.time() * 1000)
    assert info["status"] == "exited" and info["exit_code"] == 1
    assert client.delete("/api/v1/processes/slowback").status_code == 204
    info = client.get("/api/v1/processes/slowback").json()
    assert info["managed"]["status"] == "stopped"


def test_managed_tcp_health_check(client):
    port = _free_port()
    server = (
        f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen(); time.sleep(100)"
    )
    start(
        client,
        command=sys.executable,
        args=["-c", server],
        name="tcp-hc",
        health_check={
            "type": "tcp",
            "port": port,
            "initial_delay_ms": 100,
            "interval_ms": 100,
            "timeout_ms": 500,
        },
    )
    info = wait_for(
        lambda: (
            (i := client.get("/api/v1/processes/tcp-hc").json())["managed"]["health_status"] == "healthy"
            and i
        ),
        10,
    )
    assert info["managed"]["status"] == "running"
    assert info["managed"]["health_check"]["port"] == port
    client.delete("/api/v1/processes/tcp-hc")


def test_managed_http_health_check_failure_restarts(client):
    port = _free_port()  # nothing listens there
    start(
        client,
        command="sleep",
        args=["100"],
        name="http-hc",
        restart={"policy": "on_failure", "initial_backoff_ms": 10, "max_restarts": 1},
        health_check={
            "type": "http",
            "port": port,
            "path": "/healthz",
            "initial_delay_ms": 50,
            "interval_ms": 50,
            "timeout_ms": 200,
            "failure_threshold": 2,
        },
    )
    info = wait_for(
        lambda: (i := client.get("/api/v1/processes/http-hc").json())["managed"]["restart_count"] == 1 and i,
        10,
    )
    assert info["managed"]["last_exit"]["signal"] == 15
    client.delete("/api/v1/processes/http-hc")


# ------------------------------------------------------------------------------------------------ files


def test_file_round_trip_text_and_binary(client, tmpdir_path):
    p = os.path.join(tmpdir_path, "hello.txt")
    r = client.put("/api/v1/files", params=fparams(p), content=b"hello world\n")
    assert r.status_code == 204
    r = client.get("/api/v1/files", params=fparams(p))
    assert r.status_code == 200 and r.content == b"hello world\n"
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-length"] == "12"
    blob = os.urandom(3 * 1024 * 1024 + 17)
    b = os.path.join(tmpdir_path, "deep", "er", "blob.bin")  # parents are created
    assert client.put("/api/v1/files", params=fparams(b), content=blob).status_code == 204
    assert client.get("/api/v1/files", params=fparams(b)).content == blob
    # overwrite keeps it atomic and leaves no temp files behind
    assert client.put("/api/v1/files", params=fparams(b), content=b"small").status_code == 204
    assert client.get("/api/v1/files", params=fparams(b)).content == b"small"
    assert os.listdir(os.path.dirname(b)) == ["blob.bin"]
    # empty file
    e = os.path.join(tmpdir_path, "empty")
    assert client.put("/api/v1/files", params=fparams(e), content=b"").status_code == 204
    r = client.get("/api/v1/files", params=fparams(e))
    assert r.status_code == 200 and r.content == b""


def test_file_upload_chunked(client, tmpdir_path):
    p = os.path.join(tmpdir_path, "chunked.bin")
    parts = [os.urandom(100_000) for _ in range(5)]
    assert client.put("/api/v1/files", params=fparams(p), content=iter(parts)).status_code == 204
    assert open(p, "rb").read() == b"".join(parts)


def test_file_paths_with_spaces_and_unicode(client, tmpdir_path):
    p = os.path.join(tmpdir_path, "dir with space", "naïve ☃ file.txt")
    assert client.put("/api/v1/files", params=fparams(p), content="snow ☃".encode()).status_code == 204
    assert client.get("/api/v1/files", params=fparams(p)).content == "snow ☃".encode()
    listing = client.get("/api/v1/files/list", params=fparams(os.path.dirname(p))).json()
    assert [e["name"] for e in listing["entries"]] == ["naïve ☃ file.txt"]
    assert client.delete("/api/v1/files", params=fparams(p)).status_code == 204
    assert not os.path.exists(p)


def test_file_errors(client, tmpdir_path):
    r = client.get("/api/v1/files", params=fparams("relative/path.txt"))
    assert r.status_code == 400 and r.json()["code"] == "INVALID_PATH"
    r = client.get("/api/v1/files")
    assert r.status_code == 400 and r.json()["code"] == "INVALID_PATH"
    r = client.put("/api/v1/files", params=fparams("rel"), content=b"x")
    assert r.status_code == 400 and r.json()["code"] == "INVALID_PATH"
    missing = os.path.join(tmpdir_path, "nope")
    r = client.get("/api/v1/files", params=fparams(missing))
    assert r.status_code == 404 and r.json() == {"error": f"File not found: {missing}", "code": "NOT_FOUND"}
    r = client.delete("/api/v1/files", params=fparams(missing))
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    r = client.get("/api/v1/files/list", params=fparams(missing))
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    r = client.get("/api/v1/files", params=fparams(tmpdir_path))
    assert r.status_code == 400 and r.json()["code"] == "IS_DIRECTORY"
    r = client.put("/api/v1/files", params=fparams(tmpdir_path), content=b"x")
    assert r.status_code == 400 and r.json()["code"] == "IS_DIRECTORY"
    f = os.path.join(tmpdir_path, "afile")
    open(f, "w").close()
    r = client.get("/api/v1/files/list", params=fparams(f))
    assert r.status_code == 400 and r.json()["code"] == "NOT_A_DIRECTORY"
    r = client.put("/api/v1/files", params=fparams(f + "/child"), content=b"x")
    assert r.status_code == 400 and r.json()["code"] == "NOT_A_DIRECTORY"
    # keep-alive connection still healthy after error responses with unread bodies
    assert client.get("/api/v1/health").status_code == 200


def test_list_directory(client, tmpdir_path):
    os.makedirs(os.path.join(tmpdir_path, "bdir"))
    with open(os.path.join(tmpdir_path, "c.txt"), "wb") as f:
        f.write(b"12345")
    with open(os.path.join(tmpdir_path, "a.txt"), "wb") as f:
        f.write(b"1")
    r = client.get("/api/v1/files/list", params=fparams(tmpdir_path))
    assert r.status_code == 200
    body = r.json()
    assert body["path"] == tmpdir_path
    entries = body["entries"]
    assert [e["name"] for e in entries] == ["a.txt", "bdir", "c.txt"]
    by = {e["name"]: e for e in entries}
    assert by["c.txt"] == {
        "name": "c.txt",
        "is_dir": False,
        "size": 5,
        "modified_at": by["c.txt"]["modified_at"],
    }
    assert by["bdir"]["is_dir"] is True
    assert abs(by["c.txt"]["modified_at"] - time.time() * 1000) < 60_000


def test_big_download_does_not_block_other_requests(agent, tmpdir_path):
    p = os.path.join(tmpdir_path, "big.bin")
    with open(p, "wb") as f:
        f.write(os.urandom(1024 * 1024) * 32)
    with agent.make_client() as c, c.stream("GET", "/api/v1/files", params=fparams(p)) as r:
        assert int(r.headers["content-length"]) == 32 * 1024 * 1024
        it = r.iter_bytes()
        first = next(it)
        # the download is paused mid-way (client not reading); other requests are still served
        t0 = time.monotonic()
        assert agent.client.get("/api/v1/health").status_code == 200
        assert time.monotonic() - t0 < 1
        total = len(first) + sum(len(b) for b in it)
    assert total == 32 * 1024 * 1024


# ----------------------------------------------------------------------------------------------- limits, boot


def test_output_limit_marker():
    a = Agent({"TLE_OUTPUT_LIMIT_BYTES": "2000"})
    try:
        c = a.client
        pid = start(c, command="seq", args=["1", "1000"])["pid"]
        wait_exit(c, pid)
        time.sleep(0.05)
        out = c.get(f"/api/v1/processes/{pid}/stdout").json()
        lines = out["lines"]
        assert out["line_count"] == len(lines)
        assert lines[0].startswith("[tensorlake-emulator: ") and "output buffer limit 2000 bytes" in lines[0]
        dropped = int(lines[0].split(": ")[1].split(" ")[0])
        assert lines[-1] == "1000"
        assert dropped + len(lines) - 1 == 1000
        assert lines[1:] == [str(i) for i in range(dropped + 1, 1001)]
        assert sum(len(x) + 1 for x in lines[1:]) <= 2000
        # stderr saw nothing dropped: no marker
        assert c.get(f"/api/v1/processes/{pid}/stderr").json()["lines"] == []
        events = parse_sse(c.get(f"/api/v1/processes/{pid}/output/follow").text)
        lines2 = [d["line"] for n, d in events if n == "output"]
        assert lines2 == lines
    finally:
        a.stop()


def _dechunk(raw: bytes) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    out = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += body[:size]
        body = body[size + 2 :]


def test_slow_follower_gets_marker_not_silent_loss():
    a = Agent({"TLE_OUTPUT_LIMIT_BYTES": "2000"})
    try:
        info = start(a.client, command="sh", args=["-c", "sleep 0.3; seq 1 200000"])
        s = socket.socket(socket.AF_UNIX)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(a.socket)
        s.sendall(
            f"GET /api/v1/processes/{info['pid']}/stdout/follow HTTP/1.1\r\n"
            "Host: x\r\nConnection: close\r\n\r\n".encode()
        )
        wait_exit(a.client, info["pid"], 30)  # the follower reads nothing meanwhile
        raw = bytearray()
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            raw += data
        s.close()
        events = parse_sse(_dechunk(bytes(raw)).decode())
        assert events[-1] == ("eof", {})
        lines = [d["line"] for n, d in events if n == "output"]
        markers = [x for x in lines if x.startswith("[tensorlake-emulator: ")]
        numbers = [int(x) for x in lines if not x.startswith("[")]
        assert markers, "a follower that fell behind must be told that lines were dropped"
        dropped = sum(int(m.split(": ")[1].split(" ")[0]) for m in markers)
        assert dropped + len(numbers) == 200000
        assert numbers == sorted(numbers) and numbers[-1] == 200000
    finally:
        a.stop()


def test_entrypoint_started_at_boot():
    a = Agent({"TLE_ENTRYPOINT": json.dumps(["sh", "-c", "echo booted; sleep 100"])})
    try:
        procs = wait_for(lambda: a.client.get("/api/v1/processes").json()["processes"])
        assert procs[0]["command"] == "sh" and procs[0]["status"] == "running"
        pid = procs[0]["pid"]
        wait_for(lambda: a.client.get(f"/api/v1/processes/{pid}/stdout").json()["lines"] == ["booted"])
        # the entrypoint does not see the agent's own variables
        out, _, _, _ = run(a.client, command="sh", args=["-c", 'echo "[$TLE_ENTRYPOINT]"'])
        assert out == ["[]"]
    finally:
        a.stop()


def test_entrypoint_waits_for_its_gate(tmp_path):
    """TLE_ENTRYPOINT_GATE: the entrypoint starts only once the file exists (the emulator creates it
    when the sandbox's egress rules are in force); the agent answers meanwhile."""
    gate = tmp_path / "egress-ready"
    a = Agent({"TLE_ENTRYPOINT": json.dumps(["sh", "-c", "echo booted; sleep 100"]),
               "TLE_ENTRYPOINT_GATE": str(gate)})
    try:
        assert a.client.get("/api/v1/health").json() == {"healthy": True}
        time.sleep(0.5)
        assert a.client.get("/api/v1/processes").json()["processes"] == []
        gate.touch()
        procs = wait_for(lambda: a.client.get("/api/v1/processes").json()["processes"])
        assert procs[0]["command"] == "sh"
        out, _, _, _ = run(a.client, command="sh", args=["-c", 'echo "[$TLE_ENTRYPOINT_GATE]"'])
        assert out == ["[]"]
    finally:
        a.stop()


def test_bad_entrypoint_keeps_agent_up():
    a = Agent({"TLE_ENTRYPOINT": json.dumps(["no-such-entrypoint-xyz"])})
    try:
        assert a.client.get("/api/v1/health").json() == {"healthy": True}
    finally:
        a.stop()


def test_sigterm_stops_children_and_exits_zero():
    a = Agent()
    try:
        pid = start(a.client, command="sleep", args=["100"])["pid"]
        ignoring = start(a.client, command="sh", args=["-c", "trap '' TERM; sleep 100 & wait"])["pid"]
        time.sleep(0.2)
        t0 = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(10) == 0
        assert time.monotonic() - t0 < 6
        for p in (pid, ignoring):
            assert not os.path.exists(f"/proc/{p}") or open(f"/proc/{p}/stat").read().split(") ")[1][0] == "Z"
        assert not os.path.exists(a.socket)
    finally:
        a.stop()


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return r.returncode == 0


ZOMBIE_SCAN = """
import os
for p in os.listdir('/proc'):
    if p.isdigit():
        try:
            st = open('/proc/%s/stat' % p).read()
        except OSError:
            continue
        if st.rsplit(') ', 1)[1].startswith('Z'):
            print('zombie', st)
"""


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare --pid (root)")
def test_as_pid1_reaps_orphans_and_shuts_down():
    a = Agent(prefix=["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
    try:
        out, _, _, _ = run(a.client, command="sh", args=["-c", "echo $PPID"])
        assert out == ["1"]
        t0 = time.monotonic()
        # the shell exits at once; its background children are orphaned to the agent (PID 1)
        _, _, ex, _ = run(a.client, command="sh", args=["-c", "sleep 0.3 & sleep 0.3 & echo bg; exit 0"])
        assert ex["exit_code"] == 0 and time.monotonic() - t0 < 2
        time.sleep(0.8)
        out, err, ex, _ = run(a.client, command=sys.executable, args=["-c", ZOMBIE_SCAN])
        assert ex["exit_code"] == 0 and out == [] and err == []
        start(a.client, command="sh", args=["-c", "trap '' TERM; sleep 100 & setsid sleep 100 & wait"])
        time.sleep(0.2)
        t0 = time.monotonic()
        a.terminate()
        assert a.proc.wait(10) == 0
        assert time.monotonic() - t0 < 6
    finally:
        a.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_default_user_and_explicit_user():
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")
    a = Agent({"TLE_DEFAULT_USER": "nobody"})
    d = tempfile.mkdtemp(prefix="tle-agent-user-", dir="/tmp")
    try:
        out, _, _, _ = run(a.client, command="sh", args=["-c", "id -u; echo $HOME"])
        assert out == [str(nobody.pw_uid), nobody.pw_dir]
        out, _, _, _ = run(a.client, command="id", args=["-u"], user="root")
        assert out == ["0"]
        out, _, _, _ = run(a.client, command="id", args=["-u"], user="1234:4321")
        assert out == ["1234"]
        out, _, _, _ = run(a.client, command="id", args=["-g"], user={"uid": 1234, "gid": 4321})
        assert out == ["4321"]
        p = os.path.join(d, "sub", "f.txt")
        assert a.client.put("/api/v1/files", params=fparams(p), content=b"x").status_code == 204
        assert os.stat(p).st_uid == nobody.pw_uid
        assert os.stat(os.path.dirname(p)).st_uid == nobody.pw_uid
    finally:
        a.stop()
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ real SDK


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Forwarder:
    """TCP 127.0.0.1:port -> unix socket, so the real SDK can reach the agent."""

    def __init__(self, unix_path: str):
        self.unix_path = unix_path
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX)
            up.connect(self.unix_path)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def test_real_sdk_against_agent(agent, tmpdir_path):
    sandbox_mod = pytest.importorskip("tensorlake.sandbox")
    fwd = _Forwarder(agent.socket)
    try:
        sb = sandbox_mod.Sandbox.connect("sbx-agent-test", proxy_url=f"http://localhost:{fwd.port}")
        res = sb.run("sh", ["-c", "echo hi; echo oops >&2; exit 4"], env={"X": "1"}, timeout=30)
        assert res.exit_code == 4 and res.stdout.strip() == "hi" and res.stderr.strip() == "oops"
        res = sb.run("sleep", ["10"], timeout=0.5)
        assert res.exit_code == -9 and res.timed_out
        res = sb.run("no-such-cmd-xyz")
        assert res.exit_code == 127
        p = os.path.join(tmpdir_path, "sdk file.txt")
        sb.write_file(p, b"sdk bytes")
        assert bytes(sb.read_file(p).value) == b"sdk bytes"
        names = [e.name for e in sb.list_directory(tmpdir_path).entries]
        assert "sdk file.txt" in names
        sb.delete_file(p)
        proc = sb.start_process("cat", stdin_mode=sandbox_mod.StdinMode.PIPE)
        sb.write_stdin(proc.pid, b"line one\n")
        sb.close_stdin(proc.pid)
        wait_for(lambda: sb.get_process(proc.pid).status != "running")
        assert sb.get_stdout(proc.pid).lines == ["line one"]
        assert [e.line for e in sb.follow_output(proc.pid)] == ["line one"]
        assert proc.pid in [x.pid for x in sb.list_processes()]
        web = sb.start_process("sleep", ["100"], name="sdk web", restart={"policy": "always"})
        assert web.managed is not None and web.managed.id == "sdk web"
        again = sb.restart_process("sdk web")
        assert again.pid != web.pid
        assert sb.send_signal("sdk web", 0).success is True
        sb.kill_process("sdk web")
        assert sb.health().healthy is True
        assert sb.daemon_info().total_processes >= 1
        with pytest.raises(Exception) as ei:
            sb.get_process(99999999)
        assert "404" in str(ei.value) or getattr(ei.value, "status_code", None) == 404
    finally:
        fwd.close()


# ------------------------------------------------------------------------------------------------ PTY, tunnels
# The proxy's side of an upgraded connection, spoken directly: frames of 1 byte kind + 4 bytes length + payload.

FRAME_BINARY, FRAME_TEXT, FRAME_CLOSE = 0, 1, 2


class Frames:
    def __init__(self, agent, target: str, headers: dict | None = None, upgrade: bool = True):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(15)
        self.sock.connect(agent.socket)
        head = f"GET {target} HTTP/1.1\r\nHost: sandbox\r\n"
        if upgrade:
            head += "Connection: Upgrade\r\nUpgrade: tle-frames\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        self.sock.sendall(head.encode() + b"\r\n")
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if self.status != 101:
            n = int(self.headers.get("content-length", "0"))
            while len(self.buf) < n:
                self.buf += self.sock.recv(65536)
            self.body = json.loads(self.buf[:n]) if n else None
            self.sock.close()

    def _exactly(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self) -> tuple | None:
        head = self._exactly(5)
        if head is None:
            return None
        kind, n = struct.unpack(">BI", head)
        return kind, self._exactly(n) if n else b""

    def send(self, payload: bytes, kind: int = FRAME_BINARY) -> None:
        self.sock.sendall(struct.pack(">BI", kind, len(payload)) + payload)

    def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            self.send(struct.pack(">H", code) + reason.encode(), FRAME_CLOSE)
        except OSError:
            pass
        self.sock.close()

    def pty_until_close(self, limit: float = 15.0) -> tuple:
        """(terminal output, exit code from the 0x03 message or None, (close code, reason) or None)."""
        out, code, closed = bytearray(), None, None
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            f = self.recv()
            if f is None:
                break
            kind, p = f
            if kind == FRAME_CLOSE:
                closed = (struct.unpack(">H", p[:2])[0], p[2:].decode())
                break
            if p[:1] == b"\x00":
                out += p[1:]
            elif p[:1] == b"\x03":
                code = struct.unpack(">i", p[1:5])[0]
        return bytes(out), code, closed

    def pty_read_until(self, needle: bytes, limit: float = 10.0) -> bytes:
        out = bytearray()
        deadline = time.monotonic() + limit
        while needle not in out:
            assert time.monotonic() < deadline, out
            kind, p = self.recv()
            assert kind == FRAME_BINARY, (kind, p)
            if p[:1] == b"\x00":
                out += p[1:]
        return bytes(out)


def pty_create(client: httpx.Client, **body) -> dict:
    r = client.post("/api/v1/pty", json=body)
    assert r.status_code == 201, r.text
    data = r.json()
    assert set(data) == {"session_id", "token"}
    return data


def pty_attach(agent, s: dict, how: str = "query") -> Frames:
    sid, tok = s["session_id"], s["token"]
    if how == "query":
        f = Frames(agent, f"/api/v1/pty/{sid}/ws?token={tok}")
    else:
        f = Frames(agent, f"/api/v1/pty/{sid}/ws", {"X-PTY-Token": tok})
    assert f.status == 101 and f.headers["upgrade"] == "tle-frames"
    return f


def test_pty_shell_round_trip(agent, client):
    s = pty_create(client, command="/bin/sh", rows=30, cols=100, env={"PTY_VAR": "v1"})
    f = pty_attach(agent, s, how="header")
    f.send(b"\x02")  # READY
    f.send(b"\x00stty size; echo var=$PTY_VAR term=$TERM\n")
    out = f.pty_read_until(b"term=xterm-256color")
    assert b"30 100" in out and b"var=v1" in out
    f.send(struct.pack(">BHH", 1, 120, 40))  # RESIZE cols=120 rows=40
    f.send(b"\x00stty size; tty; exit 7\n")
    out, code, closed = f.pty_until_close()
    assert b"40 120" in out and b"/dev/pts/" in out
    assert code == 7 and closed == (1000, "exit:7")
    info = client.get(f"/api/v1/pty/{s['session_id']}").json()
    assert info["status"] == "exited" and info["exit_code"] == 7
    assert not os.path.exists(f"/proc/{info['pid']}")  # reaped


def test_pty_controlling_terminal_and_signal_exit(agent, client):
    code = "import os,sys; print(os.getsid(0) == os.getpid(), os.tcgetpgrp(0) == os.getpgrp()); sys.stdout.flush()"
    s = pty_create(client, command=sys.executable, args=["-c", code])
    f = pty_attach(agent, s)
    f.send(b"\x02")
    out, exit_code, closed = f.pty_until_close()
    assert b"True True" in out and exit_code == 0 and closed == (1000, "exit:0")
    s = pty_create(client, command="sh", args=["-c", "kill -9 $$"])
    f = pty_attach(agent, s)
    f.send(b"\x02")
    assert f.pty_until_close()[1:] == (137, (1000, "exit:137"))


def test_pty_output_held_until_ready_and_exit_delivered_late(agent, client):
    s = pty_create(client, command="sh", args=["-c", "echo early-bird; exit 5"])
    wait_for(lambda: client.get(f"/api/v1/pty/{s['session_id']}").json()["status"] == "exited")
    f = pty_attach(agent, s)
    f.sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        f.recv()  # nothing before READY
    f.sock.settimeout(15)
    f.send(b"\x02")
    out, code, closed = f.pty_until_close()
    assert b"early-bird" in out and code == 5 and closed == (1000, "exit:5")
    # the exited session can still be attached (and deleted) until it is deleted
    f = pty_attach(agent, s)
    f.send(b"\x02")
    assert f.pty_until_close()[1] == 5
    assert client.delete(f"/api/v1/pty/{s['session_id']}").status_code == 204
    assert client.delete(f"/api/v1/pty/{s['session_id']}").status_code == 404


def test_pty_big_output_without_client_is_not_lost(agent, client):
    # 3 MiB while nobody reads: past 1 MiB the terminal is not read and the writer blocks, nothing is dropped
    code = "import sys\nfor i in range(48000): sys.stdout.write('%07d' % i + 'x' * 57 + '\\n')"
    s = pty_create(client, command=sys.executable, args=["-c", code])
    time.sleep(1.0)
    assert client.get(f"/api/v1/pty/{s['session_id']}").json()["status"] == "running"
    f = pty_attach(agent, s)
    f.send(b"\x02")
    out, exit_code, closed = f.pty_until_close(limit=60)
    lines = out.split(b"\r\n")
    assert exit_code == 0 and closed == (1000, "exit:0")
    assert len(lines) == 48001 and lines[-1] == b""
    assert all(ln.startswith(b"%07d" % i) for i, ln in enumerate(lines[:-1]))


def test_pty_detach_reattach_replace(agent, client):
    s = pty_create(client, command="/bin/sh")
    a = pty_attach(agent, s)
    a.send(b"\x02")
    a.send(b"\x00KEEP=kept\n")
    a.pty_read_until(b"KEEP=kept")
    a.close()  # the session lives on
    b = pty_attach(agent, s)
    b.send(b"\x02")
    b.send(b"\x00echo got-$KEEP\n")
    b.pty_read_until(b"got-kept")
    c = pty_attach(agent, s)  # a newer client replaces b
    assert b.pty_until_close()[2] == (1008, "another client attached to this PTY session")
    c.send(b"\x02")
    c.send(b"\x00exit 3\n")
    assert c.pty_until_close()[1] == 3
    sessions = client.get("/api/v1/pty").json()["sessions"]
    assert s["session_id"] in [x["session_id"] for x in sessions]


def test_pty_delete_terminates_attached_session(agent, client):
    s = pty_create(client, command="sleep", args=["1000"])
    f = pty_attach(agent, s)
    f.send(b"\x02")
    pid = client.get(f"/api/v1/pty/{s['session_id']}").json()["pid"]
    assert client.delete(f"/api/v1/pty/{s['session_id']}").status_code == 204
    assert f.pty_until_close()[1:] == (None, (1001, "session terminated"))
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    assert client.get(f"/api/v1/pty/{s['session_id']}").status_code == 404


def test_pty_errors(agent, client):
    s = pty_create(client, command="/bin/sh")
    sid = s["session_id"]
    f = Frames(agent, f"/api/v1/pty/{sid}/ws?token=wrong", {"X-PTY-Token": "also-wrong"})
    assert f.status == 403 and f.body == {"error": "Invalid token", "code": "INVALID_TOKEN"}
    f = Frames(agent, f"/api/v1/pty/{sid}/ws?token=wrong", {"X-PTY-Token": s["token"]})
    assert f.status == 101  # either place may carry the good token
    f.close()
    f = Frames(agent, f"/api/v1/pty/nope/ws?token={s['token']}")
    assert f.status == 404 and f.body["code"] == "NOT_FOUND"
    f = Frames(agent, f"/api/v1/pty/{sid}/ws?token={s['token']}", upgrade=False)
    assert f.status == 426 and f.body["code"] == "UPGRADE_REQUIRED"
    r = client.post("/api/v1/pty", json={"command": "no-such-command-xyz"})
    assert r.status_code == 400 and r.json()["code"] == "SPAWN_FAILED"
    r = client.post("/api/v1/pty", json={"command": "sh", "rows": 0})
    assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST"
    r = client.post(f"/api/v1/pty/{sid}/resize", json={"rows": 10, "cols": 20})
    assert r.status_code == 200 and (r.json()["rows"], r.json()["cols"]) == (10, 20)
    assert client.delete(f"/api/v1/pty/{sid}").status_code == 204
    assert client.get("/api/v1/health").json() == {"healthy": True}


ECHO_SERVER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(8)
print("listening", flush=True)
while True:
    c, _ = srv.accept()
    first = c.recv(65536)
    if first.startswith(b"BYE"):
        c.sendall(b"bye now")
        c.close()
        continue
    data = first
    while data:
        c.sendall(data)
        data = c.recv(65536)
    c.close()
"""


@pytest.fixture
def echo_port(client):
    port = _free_port()
    proc = start(client, command=sys.executable, args=["-c", ECHO_SERVER, str(port)])
    wait_for(lambda: client.get(f"/api/v1/processes/{proc['pid']}/stdout").json()["lines"] == ["listening"])
    yield port
    client.delete(f"/api/v1/processes/{proc['pid']}")


def test_tunnel_echo_round_trip(agent, echo_port):
    f = Frames(agent, f"/api/v1/tunnels/tcp?port={echo_port}")
    assert f.status == 101
    blob = os.urandom(3 * 1024 * 1024)
    got = bytearray()

    def reader():
        while len(got) < len(blob):
            fr = f.recv()
            if fr is None or fr[0] != FRAME_BINARY:
                return
            got.extend(fr[1])

    t = threading.Thread(target=reader)
    t.start()
    for i in range(0, len(blob), 100_000):
        f.send(blob[i : i + 100_000])
    t.join(30)
    assert bytes(got) == blob
    f.close()


def test_tunnel_peer_close_closes_stream(agent, echo_port):
    f = Frames(agent, f"/api/v1/tunnels/tcp?port={echo_port}")
    assert f.status == 101
    f.send(b"BYE")
    assert f.recv() == (FRAME_BINARY, b"bye now")
    kind, payload = f.recv()
    assert kind == FRAME_CLOSE and struct.unpack(">H", payload[:2])[0] == 1000
    assert f.recv() is None


def test_tunnel_errors(agent):
    port = _free_port()  # nothing listens there
    f = Frames(agent, f"/api/v1/tunnels/tcp?port={port}")
    assert f.status == 502 and f.body["code"] == "TUNNEL_CONNECT_FAILED"
    for bad in ("0", "70000", "x", ""):
        f = Frames(agent, f"/api/v1/tunnels/tcp?port={bad}")
        assert f.status == 400 and f.body["code"] == "BAD_REQUEST"
    assert agent.client.get("/api/v1/health").json() == {"healthy": True}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_pty_runs_as_default_user_on_its_own_terminal():
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")
    a = Agent({"TLE_DEFAULT_USER": "nobody"})
    try:
        code = "import os; print('uid', os.getuid(), 'owner', os.stat(os.ttyname(0)).st_uid, os.environ['HOME'])"
        s = pty_create(a.client, command="python3", args=["-c", code])  # one that `nobody` may run
        f = pty_attach(a, s)
        f.send(b"\x02")
        out, exit_code, _ = f.pty_until_close()
        assert exit_code == 0
        assert f"uid {nobody.pw_uid} owner {nobody.pw_uid} {nobody.pw_dir}".encode() in out
    finally:
        a.stop()

"""The agent under test (the Go program in agent/), run as a real subprocess on the host as in a sandbox
(`tle-agent --socket PATH`), and the helpers the agent's test modules share: httpx over its unix socket, SSE
parsing, the proxy's side of the frame protocol."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def agent_binary() -> str:
    """The executable under test: TLE_AGENT_TEST_BINARY, else <repo>/build/agent/tle-agent, (re)built by
    emulator/setup/agent-build.sh when agent/*.go changed (a no-op of a few ms otherwise)."""
    given = os.environ.get("TLE_AGENT_TEST_BINARY")
    if given:
        return given
    out = REPO / "build" / "agent"
    r = subprocess.run(["bash", str(REPO / "emulator" / "setup" / "agent-build.sh"), str(out)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("agent build failed:\n" + r.stdout + r.stderr)
    return str(out / "tle-agent")


def agent_command(socket_path: str) -> list:
    """The agent's command line (without a prefix such as unshare)."""
    return [agent_binary(), "--socket", socket_path]


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
            [*self.prefix, *agent_command(self.socket)],
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


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return r.returncode == 0


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


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


def agent_in_mode(mode: str) -> Agent:
    """An agent as on the host ("subreaper": orphans come back to it) or as PID 1 of a pid namespace ("pid1",
    skipped without unshare --pid). The fidelity modules run each of their tests in both modes."""
    if mode == "pid1":
        if not _can_unshare():
            pytest.skip("needs unshare --pid (root)")
        return Agent(prefix=["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
    return Agent()


def _tag() -> str:
    """A sleep duration no other process uses, to find a test's processes in /proc."""
    return f"{4000 + uuid.uuid4().int % 5000}.{uuid.uuid4().int % 1000:03d}"


def _running(tag: str) -> list[int]:
    """Live (not zombie) processes whose command line contains `tag` as an argument."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{p}/stat", "rb") as f:
                state = f.read().rsplit(b") ", 1)[1][:1]
        except OSError:
            continue
        if tag.encode() in argv and state not in (b"Z", b"X"):
            out.append(int(p))
    return out


def process_gone(pid: int) -> bool:
    """True once `pid` no longer exists or is a zombie (killed, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True

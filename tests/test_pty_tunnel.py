"""PTY sessions and TCP tunnels end to end: the real SDK against a real emulator (docs/protocol.md §9, §10).

The SDK speaks WebSockets to the proxy; the proxy relays each one into the sandbox's agent over its unix
socket, and the agent makes a tunnel's TCP connection from inside the sandbox. So tunnels work in a
sandbox without any network, and the only TCP the tests open is to the SDK's local tunnel listener.

Sync SDK calls block in native code that pytest-timeout cannot interrupt: every create, wait and read
here carries its own short timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
import websockets
from tensorlake.sandbox import AsyncSandbox, Sandbox
from tensorlake.sandbox.exceptions import RemoteAPIError, SandboxConnectionError, SandboxError
from websockets.exceptions import InvalidStatus

from sdk_shim.launcher import EmulatorProcess

T = 60.0
WAIT = 20.0
WEB_PORT = 8000


class Output:
    """Collects terminal output from on_data (called on the SDK's reader thread)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.cond = threading.Condition()

    def __call__(self, chunk: bytes) -> None:
        with self.cond:
            self.data += chunk
            self.cond.notify_all()

    def wait_for(self, needle: bytes, timeout: float = WAIT) -> bytes:
        with self.cond:
            if not self.cond.wait_for(lambda: needle in self.data, timeout):
                raise AssertionError(f"{needle!r} not in terminal output {bytes(self.data)!r}")
            return bytes(self.data)


def _probe(port: int) -> list[str]:
    """A command that exits 0 once something listens on `port` inside the sandbox."""
    code = (f"import socket,time\nfor _ in range(200):\n try: socket.create_connection(('127.0.0.1',{port}),1)"
            "; break\n except OSError: time.sleep(0.05)\nelse: raise SystemExit(1)")
    return ["-c", code]


def _wait_listening(sandbox: Sandbox, port: int) -> None:
    assert sandbox.run("python3", _probe(port), timeout=15).exit_code == 0


def _start_web(sandbox: Sandbox, files: dict[str, bytes], port: int = WEB_PORT) -> int:
    for name, data in files.items():
        sandbox.write_file(f"/tmp/www/{name}", data)
    proc = sandbox.start_process("python3", ["-m", "http.server", str(port), "--bind", "127.0.0.1",
                                             "--directory", "/tmp/www"])
    _wait_listening(sandbox, port)
    return proc.pid


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=WAIT) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


# ---- sync PTY -------------------------------------------------------------------------------------


def test_create_pty_input_resize_exit(sb: Sandbox) -> None:
    out, exits = Output(), []
    pty = sb.create_pty("/bin/sh", env={"GREETING": "hi"}, rows=30, cols=100, on_data=out,
                        on_exit=exits.append, connect_timeout=10)
    assert pty.connected and pty.session_id and pty.token
    pty.send_input("stty size; echo $GREETING-$((6*7))\n")
    assert b"30 100" in out.wait_for(b"hi-42")
    pty.resize(120, 40)
    pty.send_input(b"stty size; tty; exit 3\n")
    assert pty.wait(timeout=WAIT) == 3
    assert exits == [3]
    text = bytes(out.data)
    assert b"40 120" in text and b"/dev/pts/" in text


def test_terminal_is_the_controlling_tty(sb: Sandbox) -> None:
    # session leader with the terminal as its controlling tty: job control and ^C work as in a real terminal
    code = "import os; print('ctty', os.getsid(0) == os.getpid(), os.tcgetpgrp(0) == os.getpgrp(), flush=True)"
    out = Output()
    pty = sb.create_pty("python3", ["-c", code], on_data=out, connect_timeout=10)
    assert pty.wait(timeout=WAIT) == 0
    assert b"ctty True True" in out.data
    out = Output()
    pty = sb.create_pty("/bin/bash", on_data=out, connect_timeout=10)
    pty.send_input("sleep 30\n")
    time.sleep(0.5)
    pty.send_input(b"\x03")  # ^C: the kernel signals the foreground job
    pty.send_input("echo status-$?\n")
    out.wait_for(b"status-130")
    pty.send_input("exit 0\n")
    assert pty.wait(timeout=WAIT) == 0


def test_output_before_connect_is_held_until_ready(sb: Sandbox) -> None:
    session = sb.create_pty_session("sh", ["-c", "echo early-bird; exit 5"]).value
    assert set(session) >= {"session_id", "token"}
    time.sleep(1.0)  # the program has exited long before anyone attaches
    out = Output()
    pty = sb.connect_pty(session["session_id"], session["token"], on_data=out, connect_timeout=10)
    assert pty.wait(timeout=WAIT) == 5
    assert b"early-bird" in out.data


def test_disconnect_and_attach_again(sb: Sandbox) -> None:
    session = sb.create_pty_session("/bin/bash").value
    first = Output()
    pty = sb.connect_pty(session["session_id"], session["token"], on_data=first, connect_timeout=10)
    pty.send_input("KEPT=still-here; echo set-$KEPT\n")
    first.wait_for(b"set-still-here")
    pty.disconnect()
    assert not pty.connected
    second = Output()
    again = sb.connect_pty(session["session_id"], session["token"], on_data=second, connect_timeout=10)
    again.send_input("echo got-$KEPT; exit 0\n")
    assert again.wait(timeout=WAIT) == 0
    assert b"got-still-here" in second.data


def test_kill_ends_the_session(sb: Sandbox) -> None:
    pty = sb.create_pty("sleep", ["1000"], connect_timeout=10)
    pty.kill()
    # websocket-client cannot read close reasons: the sync handle sees the close 1001 as a lost connection
    with pytest.raises(SandboxError):
        pty.wait(timeout=WAIT)
    with pytest.raises(RemoteAPIError) as err:
        pty.kill()
    assert err.value.status_code == 404


def test_bad_token_unknown_session_and_spawn_failure(sb: Sandbox) -> None:
    session = sb.create_pty_session("/bin/sh").value
    with pytest.raises(SandboxConnectionError) as err:
        sb.connect_pty(session["session_id"], "not-the-token", connect_timeout=10)
    assert "403" in str(err.value)
    with pytest.raises(SandboxConnectionError) as err:
        sb.connect_pty("no-such-session", session["token"], connect_timeout=10)
    assert "404" in str(err.value)
    with pytest.raises(RemoteAPIError) as rerr:
        sb.create_pty_session("no-such-command-xyz")
    assert rerr.value.status_code == 400 and "no-such-command-xyz" in str(rerr.value)
    sb.connect_pty(session["session_id"], session["token"], connect_timeout=10).kill()


# ---- sync tunnels ---------------------------------------------------------------------------------


def test_tunnel_to_http_server(sb: Sandbox) -> None:
    blob = bytes(range(256)) * 16384  # 4 MiB
    pid = _start_web(sb, {"hello.txt": b"hello through the tunnel\n", "blob.bin": blob})
    try:
        with sb.create_tunnel(WEB_PORT, local_port=0, connect_timeout=10) as tunnel:
            port = tunnel.local_port
            assert port and tunnel.remote_port == WEB_PORT
            assert _get(port, "/hello.txt") == (200, b"hello through the tunnel\n")
            status, body = _get(port, "/blob.bin")
            assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(blob).digest()
            assert _get(port, "/missing.txt")[0] == 404
            # one WebSocket per local connection, several at once
            results: list[tuple[int, bytes]] = []
            threads = [threading.Thread(target=lambda: results.append(_get(port, "/hello.txt"))) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(WAIT)
            assert results == [(200, b"hello through the tunnel\n")] * 8
        assert tunnel.closed
    finally:
        sb.kill_process(pid)


def test_tunnel_closes_when_the_sandbox_side_closes(sb: Sandbox) -> None:
    server = ("import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
              "s.bind(('127.0.0.1', 8001)); s.listen(4)\n"
              "while True:\n c,_=s.accept(); c.sendall(b'hello then bye\\n'); c.close()")
    proc = sb.start_process("python3", ["-c", server])
    _wait_listening(sb, 8001)
    try:
        with sb.create_tunnel(8001, local_port=0, connect_timeout=10) as tunnel:
            with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=WAIT) as c:
                data = b""
                while True:
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            assert data == b"hello then bye\n"
    finally:
        sb.kill_process(proc.pid)


def test_tunnel_to_a_closed_port_drops_the_connection(sb: Sandbox) -> None:
    with sb.create_tunnel(8009, local_port=0, connect_timeout=10) as tunnel:
        with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=WAIT) as c:
            try:
                assert c.recv(4096) == b""
            except ConnectionResetError:
                pass


def test_tunnel_without_internet_access(emulator: EmulatorProcess) -> None:
    with Sandbox.create(allow_internet_access=False, memory_mb=512, request_timeout=T) as offline:
        _start_web(offline, {"index.txt": b"served offline\n"})
        with offline.create_tunnel(WEB_PORT, local_port=0, connect_timeout=10) as tunnel:
            assert _get(tunnel.local_port, "/index.txt") == (200, b"served offline\n")


# ---- the WebSocket layer directly --------------------------------------------------------------------


async def test_websocket_routing_and_rejections(emulator: EmulatorProcess, sb: Sandbox) -> None:
    base = f"ws://127.0.0.1:{emulator.proxy_port}"
    pid = _start_web(sb, {"ws.txt": b"via the explicit header\n"}, port=8002)
    try:
        # X-Tensorlake-Sandbox-Id routing; bytes flow verbatim in binary messages
        async with websockets.connect(f"{base}/api/v1/tunnels/tcp?port=8002",
                                      additional_headers={"X-Tensorlake-Sandbox-Id": sb.sandbox_id}) as ws:
            await ws.send(b"GET /ws.txt HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            async for msg in ws:
                assert isinstance(msg, bytes)
                data += msg
            assert ws.close_code == 1000
        assert data.startswith(b"HTTP/1.0 200") and data.endswith(b"via the explicit header\n")
    finally:
        sb.kill_process(pid)

    async def rejected(path: str, headers: dict[str, str]) -> tuple[int, dict]:
        with pytest.raises(InvalidStatus) as err:
            async with websockets.connect(f"{base}{path}", additional_headers=headers):
                pass
        return err.value.response.status_code, json.loads(err.value.response.body)

    ident = {"X-Tensorlake-Sandbox-Id": sb.sandbox_id}
    status, body = await rejected("/api/v1/tunnels/tcp?port=8003", ident)
    assert status == 502 and body["code"] == "TUNNEL_CONNECT_FAILED"
    status, body = await rejected("/api/v1/tunnels/tcp?port=8003", {"X-Tensorlake-Sandbox-Id": "nope"})
    assert status == 404 and body["code"] == "SANDBOX_NOT_FOUND"
    status, body = await rejected("/api/v1/tunnels/tcp?port=8003", {})
    assert status == 400 and body["code"] == "MISSING_SANDBOX_ID"
    session = sb.create_pty_session("sh", ["-c", "exit 0"]).value
    status, body = await rejected(f"/api/v1/pty/{session['session_id']}/ws?token=wrong", ident)
    assert (status, body) == (403, {"error": "Invalid token", "code": "INVALID_TOKEN"})
    # the token in the header alone is enough; the exit comes as 0x03 and as the close reason
    async with websockets.connect(f"{base}/api/v1/pty/{session['session_id']}/ws",
                                  additional_headers={**ident, "X-PTY-Token": session["token"]}) as ws:
        await ws.send(b"\x02")
        frames = [m async for m in ws]
        assert frames[-1] == b"\x03\x00\x00\x00\x00"
        assert (ws.close_code, ws.close_reason) == (1000, "exit:0")


# ---- async ----------------------------------------------------------------------------------------


async def test_async_pty_and_tunnel(emulator: EmulatorProcess) -> None:
    sandbox = await AsyncSandbox.create(memory_mb=512, request_timeout=T)
    try:
        out = bytearray()
        pty = await sandbox.create_pty("/bin/bash", rows=24, cols=80, on_data=out.extend, connect_timeout=10)
        await pty.send_input("echo async-$((20+22))\n")
        await pty.resize(90, 20)
        await pty.send_input("stty size; exit 6\n")
        assert await pty.wait(timeout=WAIT) == 6
        assert b"async-42" in out and b"20 90" in out

        victim = await sandbox.create_pty("sleep", ["1000"], connect_timeout=10)
        await victim.kill()
        with pytest.raises(SandboxError, match="PTY session terminated"):
            await victim.wait(timeout=WAIT)

        session = (await sandbox.create_pty_session("/bin/sh")).value
        quiet = await sandbox.connect_pty(session["session_id"], session["token"], connect_timeout=10)
        await quiet.disconnect()
        assert not quiet.connected
        await quiet.kill()

        await sandbox.write_file("/tmp/www/a.txt", b"async tunnel\n")
        await sandbox.start_process("python3", ["-m", "http.server", str(WEB_PORT), "--bind", "127.0.0.1",
                                                "--directory", "/tmp/www"])
        assert (await sandbox.run("python3", _probe(WEB_PORT), timeout=15)).exit_code == 0
        tunnel = await sandbox.create_tunnel(WEB_PORT, local_port=0, connect_timeout=10)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", tunnel.local_port), WAIT)
            writer.write(b"GET /a.txt HTTP/1.0\r\nHost: x\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), WAIT)
            writer.close()
            assert data.startswith(b"HTTP/1.0 200") and data.endswith(b"async tunnel\n")
        finally:
            await tunnel.close()
    finally:
        await sandbox.terminate()


# ---- checkpoints ----------------------------------------------------------------------------------


def _criu(emulator: EmulatorProcess) -> bool:
    with urllib.request.urlopen(f"{emulator.api_url}/emulator/capabilities", timeout=10) as r:
        return bool(json.load(r)["checkpoints"]["criu"])


def test_pty_session_survives_suspend_and_resume(emulator: EmulatorProcess) -> None:
    if not _criu(emulator):
        pytest.skip("no CRIU on this host")
    named = Sandbox.create(name=f"pty-{uuid.uuid4().hex[:8]}", memory_mb=512, request_timeout=T)
    try:
        # bash: stock CRIU refuses a dump while a program on the terminal holds /dev/tty (dash does)
        session = named.create_pty_session("/bin/bash").value
        out = Output()
        pty = named.connect_pty(session["session_id"], session["token"], on_data=out, connect_timeout=10)
        pty.send_input("STATE=kept-in-memory; echo ready-$STATE\n")
        out.wait_for(b"ready-kept-in-memory")
        named.suspend(timeout=60)
        assert named.status == "suspended"
        with pytest.raises(SandboxError):  # the dump cut the WebSocket
            pty.wait(timeout=WAIT)
        named.resume(timeout=60)
        again = Output()
        pty = named.connect_pty(session["session_id"], session["token"], on_data=again, connect_timeout=10)
        pty.send_input("echo after-$STATE; exit 9\n")
        assert pty.wait(timeout=WAIT) == 9
        assert b"after-kept-in-memory" in again.data
    finally:
        named.terminate()

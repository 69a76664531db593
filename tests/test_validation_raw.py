"""Bad input that uvicorn answers itself (issue 9, kind 6), sent on raw sockets: oversized and stalled
bodies, unparsable requests, bad framing, WebSockets to the API; and records stored before the checks
existed (split from tests/test_validation.py)."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tensorlake.sandbox import Sandbox

from emulator.server import instance_label
from sdk_shim.docker_sweep import instance_selector, sweep
from sdk_shim.launcher import EmulatorProcess

T = 60.0


# ---- what uvicorn answers itself: raw sockets ------------------------------------------------------


def _raw(port: int, data: bytes, read_timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send data on a fresh connection and read one response (status, headers, body) until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) >= length:
                    break
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _json_error(status_headers_body: tuple[int, dict[str, str], bytes], status: int) -> dict[str, Any]:
    got, headers, body = status_headers_body
    assert got == status, (got, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    err = json.loads(body)
    assert isinstance(err["error"], str) and isinstance(err["code"], str)
    return err


def test_declared_oversized_body_is_a_413_without_reading_it(emulator: EmulatorProcess) -> None:
    req = (b"POST /v1/namespaces/default/sandboxes HTTP/1.1\r\nHost: localhost\r\n"
           b"Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n")
    assert _json_error(_raw(emulator.api_port, req), 413)["code"] == "PAYLOAD_TOO_LARGE"


def test_chunked_body_past_the_limit_is_a_413(emulator: EmulatorProcess) -> None:
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(17))  # just over 1 MiB, unfinished
    req = (b"POST /v1/namespaces/default/sandboxes HTTP/1.1\r\nHost: localhost\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n" + body)
    assert _json_error(_raw(emulator.api_port, req), 413)["code"] == "PAYLOAD_TOO_LARGE"


def test_body_that_stops_arriving_is_a_408(emulator: EmulatorProcess) -> None:
    req = (b"POST /v1/namespaces/default/sandboxes HTTP/1.1\r\nHost: localhost\r\n"
           b"Content-Length: 100\r\n\r\n{")
    started = time.monotonic()
    assert _json_error(_raw(emulator.api_port, req, read_timeout=60), 408)["code"] == "REQUEST_TIMEOUT"
    assert time.monotonic() - started < 45


@pytest.mark.parametrize("port_kind", ["api", "proxy"])
def test_unparsable_requests_get_json_errors(emulator: EmulatorProcess, port_kind: str) -> None:
    port = emulator.api_port if port_kind == "api" else emulator.proxy_port
    _json_error(_raw(port, b"GARBAGE\r\n\r\n"), 400)
    _json_error(_raw(port, b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n"), 400)
    _json_error(_raw(port, b"GET /\xff\xfe HTTP/1.1\r\nHost: localhost\r\n\r\n"), 400)
    _json_error(_raw(port, b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n"), 400)
    # headers still unfinished past h11's buffer limit (16 KiB)
    huge = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 100_000
    assert _json_error(_raw(port, huge), 431)["code"] == "HEADERS_TOO_LARGE"
    # a WebSocket upgrade the handshake refuses (no Sec-WebSocket-Key)
    upgrade = (b"GET /api/v1/tunnels/tcp?port=1 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
    _json_error(_raw(port, upgrade), 400)
    # and the port still answers afterwards (the proxy: that no sandbox is named)
    after = _raw(port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert after[0] == 200 if port_kind == "api" else _json_error(after, 400)["code"] == "MISSING_SANDBOX_ID"


def test_websocket_to_the_api_is_refused_in_json(emulator: EmulatorProcess) -> None:
    upgrade = (b"GET /v1/namespaces/default/sandboxes HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    _json_error(_raw(emulator.api_port, upgrade), 403)


def test_records_stored_before_the_checks_do_not_break_list() -> None:
    """A record an older emulator stored out of range (the issue's `[-1]`) is served within the SDK's types."""
    data_dir = Path(tempfile.mkdtemp(prefix="tle-val-old-", dir="/tmp"))
    emu = EmulatorProcess(data_dir=data_dir).start()
    try:
        resp = httpx.post(f"{emu.api_url}/v1/namespaces/default/sandboxes", json={"wait": False}, timeout=30)
        sid = resp.json()["sandbox_id"]
        assert httpx.delete(f"{emu.api_url}/v1/namespaces/default/sandboxes/{sid}", timeout=30).status_code == 200
        emu.stop()
        db = sqlite3.connect(data_dir / "state.sqlite3")
        (body,) = db.execute("SELECT body FROM sandboxes WHERE id = ?", (sid,)).fetchone()
        rec = json.loads(body)
        rec.update(exposed_ports=[-1, 8080, 70000], timeout_secs=2**64, disk_mb=2**70)
        db.execute("UPDATE sandboxes SET body = ? WHERE id = ?", (json.dumps(rec), sid))
        db.commit()
        db.close()
        emu.start()
        (info,) = [s for s in Sandbox.list(api_url=emu.api_url, request_timeout=10) if s.sandbox_id == sid]
        assert info.exposed_ports == [8080] and info.timeout_secs == 2**63 - 1
    finally:
        emu.stop()
        sweep(*instance_selector(instance_label(data_dir)))
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.parametrize("port_kind", ["api", "proxy"])
def test_bad_framing_mid_body_leaves_no_trace(emulator: EmulatorProcess, port_kind: str) -> None:
    """h11 refuses a chunk header after the app began reading the body: one JSON 400, no traceback logged."""
    port = emulator.api_port if port_kind == "api" else emulator.proxy_port
    log = Path(emulator.log_path or "")
    before = log.read_text(errors="replace").count("Traceback")
    req = (b"POST /v1/namespaces/default/sandboxes HTTP/1.1\r\nHost: localhost\r\nX-Tensorlake-Sandbox-Id: nosuch\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n")
    _json_error(_raw(port, req), 400)
    time.sleep(0.5)
    assert log.read_text(errors="replace").count("Traceback") == before

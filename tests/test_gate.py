"""The gate of both ports (issue 9, kind 7): the optional token, and Host/Origin against DNS rebinding.

One emulator of this module's own runs with TLE_API_KEY and TLE_ALLOWED_HOSTS set. The real SDK,
given the key as `api_key=` (what TENSORLAKE_API_KEY sets), must work on every path it uses:
lifecycle, proxy HTTP, the PTY WebSocket (websocket-client), a TCP tunnel, and the non-localhost
routing of docs/protocol.md §1.2 (real Host + X-Tensorlake-Sandbox-Id). Without the key, or with another
one, each port answers 401 in JSON, which the SDK raises as RemoteAPIError(401). Host and Origin
checks are tried with raw httpx and websockets, as a web page's requests would arrive.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from tensorlake.sandbox import Sandbox
from tensorlake.sandbox.exceptions import RemoteAPIError
from websockets.exceptions import InvalidStatus

from emulator.server import instance_label
from sdk_shim.docker_sweep import instance_selector, sweep
from sdk_shim.launcher import EmulatorProcess

T = 60.0
KEY = f"tle-test-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _loopback_alias() -> str | None:
    """A name other than localhost/127.0.0.1 that resolves to loopback here (the SDK's non-local path)."""
    for name in (socket.gethostname(), "vm"):
        try:
            if name not in ("localhost", "127.0.0.1") and socket.gethostbyname(name).startswith("127."):
                return name
        except OSError:
            continue
    return None


ALIAS = _loopback_alias()


@pytest.fixture(scope="module")
def gated() -> Iterator[EmulatorProcess]:
    data_dir = Path(tempfile.mkdtemp(prefix="tle-gate-", dir="/tmp"))
    hosts = ",".join(h for h in ("emulator.test", ALIAS) if h)
    emu = EmulatorProcess(data_dir=data_dir, extra_env={"TLE_API_KEY": KEY, "TLE_ALLOWED_HOSTS": hosts}).start()
    try:
        yield emu
    finally:
        emu.stop()
        sweep(*instance_selector(instance_label(data_dir)))
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def sb(gated: EmulatorProcess) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(api_url=gated.api_url, api_key=KEY, memory_mb=256, request_timeout=T)
    yield sandbox
    sandbox.terminate()


def _json_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["code"] == code and isinstance(body["error"], str), body
    return body


# ---- the token --------------------------------------------------------------------------------------


def test_sdk_without_or_with_a_wrong_key_gets_401(gated: EmulatorProcess) -> None:
    for key in (None, "not-the-key"):
        with pytest.raises(RemoteAPIError) as err:
            list(Sandbox.list(api_url=gated.api_url, api_key=key, request_timeout=10))
        assert err.value.status_code == 401 and err.value.code == "UNAUTHORIZED"
        with pytest.raises(RemoteAPIError) as err:
            Sandbox.create(api_url=gated.api_url, api_key=key, request_timeout=10)
        assert err.value.status_code == 401
    # nothing was created by the refused calls
    assert list(Sandbox.list(api_url=gated.api_url, api_key=KEY, request_timeout=10)) == []


def test_api_401_shape_and_open_health_check(gated: EmulatorProcess) -> None:
    api = gated.api_url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": KEY}):
        resp = httpx.get(f"{api}/v1/namespaces/default/sandboxes", headers=headers, timeout=10)
        _json_error(resp, 401, "UNAUTHORIZED")
        assert resp.headers["www-authenticate"].startswith("Bearer")
    # unknown routes too: the gate is in front of everything
    _json_error(httpx.get(f"{api}/no/such/route", timeout=10), 401, "UNAUTHORIZED")
    assert httpx.get(f"{api}/no/such/route", headers=AUTH, timeout=10).status_code == 404
    assert httpx.get(f"{api}/healthz", timeout=10).json() == {"healthy": True}
    assert httpx.get(f"{api}/v1/namespaces/default/sandboxes", headers={"authorization": f"bearer {KEY}"},
                     timeout=10).status_code == 200


def test_sdk_with_the_key_uses_every_path(sb: Sandbox) -> None:
    # proxy HTTP (Host: <id>.local) and SSE
    assert sb.run("sh", ["-c", "echo gated"]).stdout.strip() == "gated"
    sb.write_file("/tmp/g.txt", b"through the gate")
    assert sb.read_file("/tmp/g.txt").value == b"through the gate"
    # PTY: POST, then the websocket-client upgrade with Authorization and Origin: http://localhost:<port>
    out = bytearray()
    done = threading.Event()

    def on_data(chunk: bytes) -> None:
        out.extend(chunk)
        if b"pty-ok" in out:
            done.set()

    pty = sb.create_pty("/bin/sh", ["-c", "echo pty-ok; exit 3"], on_data=on_data, connect_timeout=10)
    assert pty.wait(timeout=20) == 3
    assert done.wait(5), bytes(out)
    # a tunnel: one WebSocket per local connection, with the key
    proc = sb.start_process("python3", ["-c", ECHO_REVERSED])
    try:
        assert sb.run("python3", ["-c", WAIT_7002], timeout=15).exit_code == 0
        with sb.create_tunnel(7002, local_port=0, connect_timeout=10) as tunnel:
            with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=20) as c:
                c.sendall(b"abc")
                assert c.recv(100) == b"cba"
    finally:
        sb.kill_process(proc.pid)


ECHO_REVERSED = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7002))
s.listen()
while True:
    c, _ = s.accept()
    data = c.recv(100)
    if data:
        c.sendall(data[::-1])
    c.close()
"""
WAIT_7002 = """
import socket, time
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", 7002), 1).close()
        break
    except OSError:
        time.sleep(0.05)
else:
    raise SystemExit(1)
"""


def test_proxy_refuses_without_the_key(gated: EmulatorProcess, sb: Sandbox) -> None:
    url = f"{gated.proxy_url}/api/v1/health"
    route = {"Host": f"{sb.sandbox_id}.local"}
    _json_error(httpx.get(url, headers=route, timeout=10), 401, "UNAUTHORIZED")
    _json_error(httpx.get(url, headers={**route, "Authorization": "Bearer nope"}, timeout=10), 401, "UNAUTHORIZED")
    assert httpx.get(url, headers={**route, **AUTH}, timeout=10).json() == {"healthy": True}
    # nothing reached the sandbox: a refused start_process starts nothing
    body = {"command": "sh", "args": ["-c", "echo should-not-run > /tmp/refused"]}
    _json_error(httpx.post(f"{gated.proxy_url}/api/v1/processes", json=body, headers=route, timeout=10),
                401, "UNAUTHORIZED")
    assert sb.run("sh", ["-c", "test -e /tmp/refused && echo yes || echo no"]).stdout.strip() == "no"


async def test_websocket_upgrades_need_the_key(gated: EmulatorProcess, sb: Sandbox) -> None:
    base = f"ws://127.0.0.1:{gated.proxy_port}"
    session = sb.create_pty_session("/bin/sh", ["-c", "exit 0"]).value
    route = {"X-Tensorlake-Sandbox-Id": sb.sandbox_id}
    for path in (f"/api/v1/pty/{session['session_id']}/ws?token={session['token']}", "/api/v1/tunnels/tcp?port=1"):
        for headers in (route, {**route, "Authorization": "Bearer wrong"}):
            with pytest.raises(InvalidStatus) as err:
                async with websockets.connect(f"{base}{path}", additional_headers=headers):
                    pass
            assert err.value.response.status_code == 401
            assert json.loads(err.value.response.body)["code"] == "UNAUTHORIZED"
    async with websockets.connect(f"{base}/api/v1/pty/{session['session_id']}/ws?token={session['token']}",
                                  additional_headers={**route, **AUTH}) as ws:
        await ws.send(b"\x02")
        frames = [m async for m in ws]
        assert frames[-1] == b"\x03\x00\x00\x00\x00"


# ---- Host and Origin ----------------------------------------------------------------------------------


@pytest.mark.parametrize("port_kind", ["api", "proxy"])
def test_foreign_host_and_origin_are_refused(gated: EmulatorProcess, sb: Sandbox, port_kind: str) -> None:
    if port_kind == "api":
        url, route = f"{gated.api_url}/v1/namespaces/default/sandboxes", {}
    else:
        url, route = f"{gated.proxy_url}/api/v1/health", {"X-Tensorlake-Sandbox-Id": sb.sandbox_id}
    ok = {**route, **AUTH}
    for host in ("evil.example", "evil.example:8900", "127.0.0.1.evil.example", "0.0.0.0", "[::2]:1", "x:y"):
        _json_error(httpx.get(url, headers={**ok, "Host": host}, timeout=10), 403, "HOST_NOT_ALLOWED")
    for origin in ("http://evil.example", "https://evil.example:8900", "null", "http://localhost.evil.example",
                   "file://", "http://emulator.test.evil.example"):
        _json_error(httpx.get(url, headers={**ok, "Origin": origin}, timeout=10), 403, "HOST_NOT_ALLOWED")
    for host in ("localhost", "127.0.0.1:1234", "[::1]:8900", "LOCALHOST", "emulator.test:9443"):
        assert httpx.get(url, headers={**ok, "Host": host}, timeout=10).status_code == 200, host
    for origin in ("http://localhost:3000", "http://127.0.0.1", "http://[::1]:5173", "https://emulator.test"):
        assert httpx.get(url, headers={**ok, "Origin": origin}, timeout=10).status_code == 200, origin


def test_local_routing_hosts(gated: EmulatorProcess, sb: Sandbox) -> None:
    url = f"{gated.proxy_url}/api/v1/health"
    assert httpx.get(url, headers={**AUTH, "Host": f"{sb.sandbox_id}.local"}, timeout=10).status_code == 200
    # the SDK never adds a port to `<id>.local`, and a browser always would (DNS rebinding through mDNS)
    _json_error(httpx.get(url, headers={**AUTH, "Host": f"{sb.sandbox_id}.local:{gated.proxy_port}"}, timeout=10),
                403, "HOST_NOT_ALLOWED")
    _json_error(httpx.get(url, headers={**AUTH, "Host": "a.b.local"}, timeout=10), 403, "HOST_NOT_ALLOWED")
    # `.local` names a sandbox on the proxy only
    _json_error(httpx.get(f"{gated.api_url}/healthz", headers={"Host": f"{sb.sandbox_id}.local"}, timeout=10),
                403, "HOST_NOT_ALLOWED")


async def test_websocket_from_a_foreign_page_is_refused(gated: EmulatorProcess, sb: Sandbox) -> None:
    session = sb.create_pty_session("/bin/sh", ["-c", "exit 0"]).value
    path = f"/api/v1/pty/{session['session_id']}/ws?token={session['token']}"
    headers = {"X-Tensorlake-Sandbox-Id": sb.sandbox_id, **AUTH}
    # an Origin of another site, and a Host of another name (connected to loopback, as after DNS rebinding)
    attempts = [(f"ws://127.0.0.1:{gated.proxy_port}{path}", {"Origin": "http://evil.example"}),
                (f"ws://evil.example:{gated.proxy_port}{path}", {})]
    for uri, extra in attempts:
        with pytest.raises(InvalidStatus) as err:
            async with websockets.connect(uri, additional_headers={**headers, **extra}, host="127.0.0.1",
                                          port=gated.proxy_port):
                pass
        assert err.value.response.status_code == 403
        assert json.loads(err.value.response.body)["code"] == "HOST_NOT_ALLOWED"


@pytest.mark.skipif(ALIAS is None, reason="no name other than localhost resolves to loopback on this host")
def test_sdk_through_an_allowed_non_local_name(gated: EmulatorProcess, sb: Sandbox) -> None:
    """As under compose: the proxy URL's host is not localhost, so the SDK sends `Host: <name>:<port>`
    and X-Tensorlake-Sandbox-Id (docs/protocol.md §1.2); TLE_ALLOWED_HOSTS lets that name in."""
    other = Sandbox.connect(sb.sandbox_id, proxy_url=f"http://{ALIAS}:{gated.proxy_port}", api_key=KEY,
                            api_url=gated.api_url, request_timeout=T)
    assert other.run("echo", ["via", str(ALIAS)]).stdout.strip() == f"via {ALIAS}"
    # The lifecycle under that name takes TENSORLAKE_SANDBOX_API_URL (flat paths), read at import: a
    # subprocess, with every URL set so that nothing goes past loopback.
    url = f"http://{ALIAS}:{gated.api_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORLAKE_")}
    env.update({"TENSORLAKE_API_URL": url, "TENSORLAKE_SANDBOX_API_URL": url, "TENSORLAKE_API_KEY": KEY})
    script = "from tensorlake.sandbox import Sandbox\nprint([s.sandbox_id for s in Sandbox.list(request_timeout=10)])"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == repr([sb.sandbox_id])


def test_default_emulator_checks_hosts_without_a_key(emulator: EmulatorProcess) -> None:
    """The session's emulator has no key and no extra hosts: Host and Origin are still checked."""
    url = f"{emulator.api_url}/v1/namespaces/default/sandboxes"
    assert httpx.get(url, timeout=10).status_code == 200
    _json_error(httpx.get(url, headers={"Host": "attacker.example"}, timeout=10), 403, "HOST_NOT_ALLOWED")
    _json_error(httpx.get(url, headers={"Origin": "http://attacker.example"}, timeout=10), 403, "HOST_NOT_ALLOWED")
    _json_error(httpx.post(url, json={}, headers={"Origin": "http://attacker.example"}, timeout=10), 403,
                "HOST_NOT_ALLOWED")
    assert httpx.get(url, headers={"Host": "emulator.test"}, timeout=10).status_code == 403

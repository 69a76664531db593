"""HTTP/1.1 on the agent's socket (http_connection, http_request): bodies, malformed requests, 100-continue.

The agent runs as a real subprocess (agent_helpers.Agent); see conftest.py for the fixtures."""

from __future__ import annotations

import os
import socket

import pytest


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
        # HTTP/1.1 (the Go agent's net/http answers an HTTP/1.0 request with an HTTP/1.0 status line)
        assert out.startswith((b"HTTP/1.1 ", b"HTTP/1.0 "))
    assert agent.client.get("/api/v1/health").json() == {"healthy": True}


def test_expect_100_continue(agent, tmpdir_path):
    p = os.path.join(tmpdir_path, "expect.txt")
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(agent.socket)
    s.sendall(
        # (with a Host header, which HTTP/1.1 requires: the Go agent's net/http refuses a request without one;
        # the proxy's httpx always sends it)
        f"PUT /api/v1/files?path={p} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        .encode()
    )
    assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    s.sendall(b"hello")
    assert s.recv(100).startswith(b"HTTP/1.1 204 ")
    s.close()
    assert open(p, "rb").read() == b"hello"

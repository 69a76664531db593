"""TCP tunnels (tcp_tunnel) spoken to as the proxy does, in frames.

The agent runs as a real subprocess (agent_helpers.Agent); see conftest.py for the fixtures."""

from __future__ import annotations

import os
import struct
import sys
import threading

import pytest
from agent_helpers import FRAME_BINARY, FRAME_CLOSE, Frames, _free_port, start, wait_for

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

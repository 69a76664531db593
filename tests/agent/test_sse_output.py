"""The output buffer's limit and its marker (output_buffer, sse_output), in GET answers and follow streams.

The agent runs as a real subprocess (agent_helpers.Agent); see conftest.py for the fixtures."""

from __future__ import annotations

import socket
import time

from agent_helpers import Agent, parse_sse, start, wait_exit

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

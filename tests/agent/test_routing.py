"""Routes (router.go): what answers which method and path, 404 and 405; the agent is one static executable.

The agent runs as a real subprocess (agent_helpers.Agent); see conftest.py for the fixtures."""

from __future__ import annotations

import struct

from agent_helpers import agent_binary

# ------------------------------------------------------------------------------------------------ the binary


def test_agent_is_one_static_executable():
    """The agent runs in any image (no python, no libc): its ELF has neither an interpreter (PT_INTERP) nor a
    dynamic section (PT_DYNAMIC)."""
    with open(agent_binary(), "rb") as f:
        elf = f.read()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2  # 64-bit
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    types = {struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)}
    assert 3 not in types and 2 not in types, types


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

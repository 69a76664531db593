"""Managed processes (supervision): restart policies, backoff, health checks.

The agent runs as a real subprocess (agent_helpers.Agent); see conftest.py for the fixtures."""

from __future__ import annotations

import sys
import time

from agent_helpers import _free_port, parse_sse, start, wait_for

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

"""Started processes (process_api, process_table, child_process): list, get, signals, stdin, output, follow.

The agent runs as a real subprocess (agent_helpers.Agent); see conftest.py for the fixtures."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

from agent_helpers import parse_sse, process_gone, start, wait_exit, wait_for

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

    wait_for(lambda: process_gone(gpid), 5)


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

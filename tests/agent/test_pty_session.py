"""PTY sessions (pty_api, pty_session) spoken to as the proxy does, in frames.

The agent runs as a real subprocess (agent_helpers.Agent); see conftest.py for the fixtures."""

from __future__ import annotations

import os
import socket
import struct
import sys
import time

import pytest
from agent_helpers import Agent, Frames, pty_attach, pty_create, wait_for


def test_pty_shell_round_trip(agent, client):
    s = pty_create(client, command="/bin/sh", rows=30, cols=100, env={"PTY_VAR": "v1"})
    f = pty_attach(agent, s, how="header")
    f.send(b"\x02")  # READY
    f.send(b"\x00stty size; echo var=$PTY_VAR term=$TERM\n")
    out = f.pty_read_until(b"term=xterm-256color")
    assert b"30 100" in out and b"var=v1" in out
    f.send(struct.pack(">BHH", 1, 120, 40))  # RESIZE cols=120 rows=40
    f.send(b"\x00stty size; tty; exit 7\n")
    out, code, closed = f.pty_until_close()
    assert b"40 120" in out and b"/dev/pts/" in out
    assert code == 7 and closed == (1000, "exit:7")
    info = client.get(f"/api/v1/pty/{s['session_id']}").json()
    assert info["status"] == "exited" and info["exit_code"] == 7
    assert not os.path.exists(f"/proc/{info['pid']}")  # reaped


def test_pty_controlling_terminal_and_signal_exit(agent, client):
    code = "import os,sys; print(os.getsid(0) == os.getpid(), os.tcgetpgrp(0) == os.getpgrp()); sys.stdout.flush()"
    s = pty_create(client, command=sys.executable, args=["-c", code])
    f = pty_attach(agent, s)
    f.send(b"\x02")
    out, exit_code, closed = f.pty_until_close()
    assert b"True True" in out and exit_code == 0 and closed == (1000, "exit:0")
    s = pty_create(client, command="sh", args=["-c", "kill -9 $$"])
    f = pty_attach(agent, s)
    f.send(b"\x02")
    assert f.pty_until_close()[1:] == (137, (1000, "exit:137"))


def test_pty_output_held_until_ready_and_exit_delivered_late(agent, client):
    s = pty_create(client, command="sh", args=["-c", "echo early-bird; exit 5"])
    wait_for(lambda: client.get(f"/api/v1/pty/{s['session_id']}").json()["status"] == "exited")
    f = pty_attach(agent, s)
    f.sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        f.recv()  # nothing before READY
    f.sock.settimeout(15)
    f.send(b"\x02")
    out, code, closed = f.pty_until_close()
    assert b"early-bird" in out and code == 5 and closed == (1000, "exit:5")
    # the exited session can still be attached (and deleted) until it is deleted
    f = pty_attach(agent, s)
    f.send(b"\x02")
    assert f.pty_until_close()[1] == 5
    assert client.delete(f"/api/v1/pty/{s['session_id']}").status_code == 204
    assert client.delete(f"/api/v1/pty/{s['session_id']}").status_code == 404


def test_pty_big_output_without_client_is_not_lost(agent, client):
    # 3 MiB while nobody reads: past 1 MiB the terminal is not read and the writer blocks, nothing is dropped
    code = "import sys\nfor i in range(48000): sys.stdout.write('%07d' % i + 'x' * 57 + '\\n')"
    s = pty_create(client, command=sys.executable, args=["-c", code])
    time.sleep(1.0)
    assert client.get(f"/api/v1/pty/{s['session_id']}").json()["status"] == "running"
    f = pty_attach(agent, s)
    f.send(b"\x02")
    out, exit_code, closed = f.pty_until_close(limit=60)
    lines = out.split(b"\r\n")
    assert exit_code == 0 and closed == (1000, "exit:0")
    assert len(lines) == 48001 and lines[-1] == b""
    assert all(ln.startswith(b"%07d" % i) for i, ln in enumerate(lines[:-1]))


def test_pty_detach_reattach_replace(agent, client):
    s = pty_create(client, command="/bin/sh")
    a = pty_attach(agent, s)
    a.send(b"\x02")
    a.send(b"\x00KEEP=kept\n")
    a.pty_read_until(b"KEEP=kept")
    a.close()  # the session lives on
    b = pty_attach(agent, s)
    b.send(b"\x02")
    b.send(b"\x00echo got-$KEEP\n")
    b.pty_read_until(b"got-kept")
    c = pty_attach(agent, s)  # a newer client replaces b
    assert b.pty_until_close()[2] == (1008, "another client attached to this PTY session")
    c.send(b"\x02")
    c.send(b"\x00exit 3\n")
    assert c.pty_until_close()[1] == 3
    sessions = client.get("/api/v1/pty").json()["sessions"]
    assert s["session_id"] in [x["session_id"] for x in sessions]


def test_pty_delete_terminates_attached_session(agent, client):
    s = pty_create(client, command="sleep", args=["1000"])
    f = pty_attach(agent, s)
    f.send(b"\x02")
    pid = client.get(f"/api/v1/pty/{s['session_id']}").json()["pid"]
    assert client.delete(f"/api/v1/pty/{s['session_id']}").status_code == 204
    assert f.pty_until_close()[1:] == (None, (1001, "session terminated"))
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    assert client.get(f"/api/v1/pty/{s['session_id']}").status_code == 404


def test_pty_errors(agent, client):
    s = pty_create(client, command="/bin/sh")
    sid = s["session_id"]
    f = Frames(agent, f"/api/v1/pty/{sid}/ws?token=wrong", {"X-PTY-Token": "also-wrong"})
    assert f.status == 403 and f.body == {"error": "Invalid token", "code": "INVALID_TOKEN"}
    f = Frames(agent, f"/api/v1/pty/{sid}/ws?token=wrong", {"X-PTY-Token": s["token"]})
    assert f.status == 101  # either place may carry the good token
    f.close()
    f = Frames(agent, f"/api/v1/pty/nope/ws?token={s['token']}")
    assert f.status == 404 and f.body["code"] == "NOT_FOUND"
    f = Frames(agent, f"/api/v1/pty/{sid}/ws?token={s['token']}", upgrade=False)
    assert f.status == 426 and f.body["code"] == "UPGRADE_REQUIRED"
    r = client.post("/api/v1/pty", json={"command": "no-such-command-xyz"})
    assert r.status_code == 400 and r.json()["code"] == "SPAWN_FAILED"
    r = client.post("/api/v1/pty", json={"command": "sh", "rows": 0})
    assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST"
    r = client.post(f"/api/v1/pty/{sid}/resize", json={"rows": 10, "cols": 20})
    assert r.status_code == 200 and (r.json()["rows"], r.json()["cols"]) == (10, 20)
    assert client.delete(f"/api/v1/pty/{sid}").status_code == 204
    assert client.get("/api/v1/health").json() == {"healthy": True}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_pty_runs_as_default_user_on_its_own_terminal():
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")
    a = Agent({"TLE_DEFAULT_USER": "nobody"})
    try:
        code = "import os; print('uid', os.getuid(), 'owner', os.stat(os.ttyname(0)).st_uid, os.environ['HOME'])"
        s = pty_create(a.client, command="python3", args=["-c", code])  # one that `nobody` may run
        f = pty_attach(a, s)
        f.send(b"\x02")
        out, exit_code, _ = f.pty_until_close()
        assert exit_code == 0
        assert f"uid {nobody.pw_uid} owner {nobody.pw_uid} {nobody.pw_dir}".encode() in out
    finally:
        a.stop()

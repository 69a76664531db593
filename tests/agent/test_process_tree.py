"""Whole process trees (process_tree, supervised) ended by kill, timeout, managed stop and PTY delete,
however they detached (issue 9).

Each test runs against an agent subprocess in both modes (agent_helpers.agent_in_mode)."""

from __future__ import annotations

import sys
import time
import uuid

import pytest
from agent_helpers import _running, _tag, agent_in_mode, run, start, wait_for


@pytest.fixture(scope="module", params=["subreaper", "pid1"])
def agent(request):
    """The agent as on the host (orphans come back to it as a subreaper) and as PID 1 of a pid namespace."""
    a = agent_in_mode(request.param)
    yield a
    a.stop()


DAEMONIZE = """
import os, sys, time
if os.fork(): os._exit(0)
os.setsid()
if os.fork(): os._exit(0)
os.chdir('/')
fd = os.open(os.devnull, os.O_RDWR)
for i in (0, 1, 2): os.dup2(fd, i)
os.execvp('sleep', ['sleep', sys.argv[1]])
"""
NEW_GROUP = "import os, subprocess, sys\nsubprocess.Popen(['sleep', sys.argv[1]], preexec_fn=os.setpgrp).wait()"


def _detaching(tag: str) -> dict[str, list[str]]:
    """One command per way a descendant can leave its parent's group/session/ancestry."""
    return {
        "setsid": ["sh", "-c", f"setsid sleep {tag} & wait"],
        "double_fork": ["sh", "-c", f"(sleep {tag} &); sleep 300"],
        "new_group": [sys.executable, "-c", NEW_GROUP, tag],
        "nohup": ["sh", "-c", f"nohup sleep {tag} >/dev/null 2>&1 & wait"],
        "daemon": ["sh", "-c", f"{sys.executable} -c \"$0\" {tag}; sleep 300", DAEMONIZE],
        # env cleared + setsid + double fork: only the remembered ancestry can attribute it (the middle
        # process lives long enough for a scan to see it)
        "env_cleared": ["sh", "-c", f"(setsid env -i sleep {tag} & sleep 0.5); sleep 300"],
    }


@pytest.mark.parametrize("how", list(_detaching("0")))
def test_kill_ends_the_whole_tree_however_it_detached(client, how):
    tag = _tag()
    argv = _detaching(tag)[how]
    other = _tag()
    separate = start(client, command="sleep", args=[other])  # started separately: its own tree
    p = start(client, command=argv[0], args=argv[1:])
    wait_for(lambda: _running(tag), timeout=5)
    time.sleep(0.8)  # the detaching is over: the descendant is re-parented where it goes
    assert client.delete(f"/api/v1/processes/{p['pid']}").status_code == 204
    wait_for(lambda: not _running(tag), timeout=5)
    assert _running(other), "a separately started process is not part of another's tree"
    client.delete(f"/api/v1/processes/{separate['pid']}")
    wait_for(lambda: not _running(other), timeout=5)


def test_kill_after_the_root_exited_ends_its_leftovers(client):
    tag = _tag()
    p = start(client, command="sh", args=["-c", f"setsid sleep {tag} & exit 0"])
    wait_for(lambda: client.get(f"/api/v1/processes/{p['pid']}").json()["status"] == "exited")
    wait_for(lambda: _running(tag), timeout=5)  # the background child may exec sleep after sh exited
    assert client.delete(f"/api/v1/processes/{p['pid']}").status_code == 204
    wait_for(lambda: not _running(tag), timeout=5)


def test_run_timeout_ends_the_detached_tree(client):
    tag = _tag()
    t0 = time.monotonic()
    _, _, ex, _ = run(client, command="sh", args=["-c", f"setsid sleep {tag} & (sleep {tag} &); sleep 300"],
                      timeout=1)
    assert ex["reason"] == "timed_out" and time.monotonic() - t0 < 5
    wait_for(lambda: not _running(tag), timeout=5)


def test_managed_stop_ends_the_detached_tree(client):
    tag = _tag()
    name = f"tree-{uuid.uuid4().hex[:6]}"
    r = client.post("/api/v1/processes", json={"command": "sh", "args": ["-c", f"setsid sleep {tag} & wait"],
                                               "name": name, "restart": {"policy": "always"}})
    assert r.status_code == 201, r.text
    wait_for(lambda: _running(tag), timeout=5)
    assert client.delete(f"/api/v1/processes/{name}").status_code == 204
    wait_for(lambda: not _running(tag), timeout=5)
    time.sleep(0.5)
    assert not _running(tag), "stopped means no restart"


def test_pty_delete_ends_the_detached_tree(client):
    tag = _tag()
    script = f"setsid sleep {tag} & (sleep {tag} &); wait"
    r = client.post("/api/v1/pty", json={"command": "sh", "args": ["-c", script]})
    assert r.status_code == 201, r.text
    wait_for(lambda: len(_running(tag)) == 2, timeout=5)
    assert client.delete(f"/api/v1/pty/{r.json()['session_id']}").status_code == 204
    wait_for(lambda: not _running(tag), timeout=5)

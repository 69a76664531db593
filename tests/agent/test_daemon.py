"""The agent as a whole (daemon): the entrypoint at boot, SIGTERM, PID 1 reaping, the default user.

The agent runs as a real subprocess (agent_helpers.Agent); see conftest.py for the fixtures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time

import pytest
from agent_helpers import Agent, _can_unshare, fparams, run, start, wait_for


def test_entrypoint_started_at_boot():
    a = Agent({"TLE_ENTRYPOINT": json.dumps(["sh", "-c", "echo booted; sleep 100"])})
    try:
        procs = wait_for(lambda: a.client.get("/api/v1/processes").json()["processes"])
        assert procs[0]["command"] == "sh" and procs[0]["status"] == "running"
        pid = procs[0]["pid"]
        wait_for(lambda: a.client.get(f"/api/v1/processes/{pid}/stdout").json()["lines"] == ["booted"])
        # the entrypoint does not see the agent's own variables
        out, _, _, _ = run(a.client, command="sh", args=["-c", 'echo "[$TLE_ENTRYPOINT]"'])
        assert out == ["[]"]
    finally:
        a.stop()


def test_entrypoint_waits_for_its_gate(tmp_path):
    """TLE_ENTRYPOINT_GATE: the entrypoint starts only once the file exists (the emulator creates it
    when the sandbox's egress rules are in force); the agent answers meanwhile."""
    gate = tmp_path / "egress-ready"
    a = Agent({"TLE_ENTRYPOINT": json.dumps(["sh", "-c", "echo booted; sleep 100"]),
               "TLE_ENTRYPOINT_GATE": str(gate)})
    try:
        assert a.client.get("/api/v1/health").json() == {"healthy": True}
        time.sleep(0.5)
        assert a.client.get("/api/v1/processes").json()["processes"] == []
        gate.touch()
        procs = wait_for(lambda: a.client.get("/api/v1/processes").json()["processes"])
        assert procs[0]["command"] == "sh"
        out, _, _, _ = run(a.client, command="sh", args=["-c", 'echo "[$TLE_ENTRYPOINT_GATE]"'])
        assert out == ["[]"]
    finally:
        a.stop()


def test_bad_entrypoint_keeps_agent_up():
    a = Agent({"TLE_ENTRYPOINT": json.dumps(["no-such-entrypoint-xyz"])})
    try:
        assert a.client.get("/api/v1/health").json() == {"healthy": True}
    finally:
        a.stop()


def test_sigterm_stops_children_and_exits_zero():
    a = Agent()
    try:
        pid = start(a.client, command="sleep", args=["100"])["pid"]
        ignoring = start(a.client, command="sh", args=["-c", "trap '' TERM; sleep 100 & wait"])["pid"]
        time.sleep(0.2)
        t0 = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(10) == 0
        assert time.monotonic() - t0 < 6
        for p in (pid, ignoring):
            assert not os.path.exists(f"/proc/{p}") or open(f"/proc/{p}/stat").read().split(") ")[1][0] == "Z"
        assert not os.path.exists(a.socket)
    finally:
        a.stop()


ZOMBIE_SCAN = """
import os
for p in os.listdir('/proc'):
    if p.isdigit():
        try:
            st = open('/proc/%s/stat' % p).read()
        except OSError:
            continue
        if st.rsplit(') ', 1)[1].startswith('Z'):
            print('zombie', st)
"""


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare --pid (root)")
def test_as_pid1_reaps_orphans_and_shuts_down():
    a = Agent(prefix=["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
    try:
        out, _, _, _ = run(a.client, command="sh", args=["-c", "echo $PPID"])
        assert out == ["1"]
        t0 = time.monotonic()
        # the shell exits at once; its background children are orphaned to the agent (PID 1)
        _, _, ex, _ = run(a.client, command="sh", args=["-c", "sleep 0.3 & sleep 0.3 & echo bg; exit 0"])
        assert ex["exit_code"] == 0 and time.monotonic() - t0 < 2
        time.sleep(0.8)
        out, err, ex, _ = run(a.client, command=sys.executable, args=["-c", ZOMBIE_SCAN])
        assert ex["exit_code"] == 0 and out == [] and err == []
        start(a.client, command="sh", args=["-c", "trap '' TERM; sleep 100 & setsid sleep 100 & wait"])
        time.sleep(0.2)
        t0 = time.monotonic()
        a.terminate()
        assert a.proc.wait(10) == 0
        assert time.monotonic() - t0 < 6
    finally:
        a.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_default_user_and_explicit_user():
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")
    a = Agent({"TLE_DEFAULT_USER": "nobody"})
    d = tempfile.mkdtemp(prefix="tle-agent-user-", dir="/tmp")
    try:
        out, _, _, _ = run(a.client, command="sh", args=["-c", "id -u; echo $HOME"])
        assert out == [str(nobody.pw_uid), nobody.pw_dir]
        out, _, _, _ = run(a.client, command="id", args=["-u"], user="root")
        assert out == ["0"]
        out, _, _, _ = run(a.client, command="id", args=["-u"], user="1234:4321")
        assert out == ["1234"]
        out, _, _, _ = run(a.client, command="id", args=["-g"], user={"uid": 1234, "gid": 4321})
        assert out == ["4321"]
        p = os.path.join(d, "sub", "f.txt")
        assert a.client.put("/api/v1/files", params=fparams(p), content=b"x").status_code == 204
        assert os.stat(p).st_uid == nobody.pw_uid
        assert os.stat(os.path.dirname(p)).st_uid == nobody.pw_uid
    finally:
        a.stop()
        shutil.rmtree(d, ignore_errors=True)

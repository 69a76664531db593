"""`run` (process_api, spawning): output, exit codes, timeouts, spawn failures, users.

The agent runs as a real subprocess (agent_helpers.Agent); see conftest.py for the fixtures."""

from __future__ import annotations

import json
import os
import sys
import time

from agent_helpers import parse_sse, process_gone, run, wait_for

# ------------------------------------------------------------------------------------------------ run


def test_run_stdout_stderr_exit_code(client):
    out, err, ex, events = run(
        client, command="sh", args=["-c", "echo out1; echo err1 >&2; echo out2; exit 3"]
    )
    assert out == ["out1", "out2"]
    assert err == ["err1"]
    assert ex == {"exit_code": 3, "signal": None, "oom_killed": False, "reason": "exited"}
    assert events[0][0] == "started" and isinstance(events[0][1]["pid"], int)
    assert events[0][1]["started_at"] > 1_600_000_000_000
    for name, d in events:
        if name == "output":
            assert isinstance(d["timestamp"], int) and d["timestamp"] > 1_600_000_000_000


def test_run_env_working_dir_and_partial_line(client, tmpdir_path):
    out, _, ex, _ = run(
        client,
        command="sh",
        args=["-c", 'echo "$A-$B"; pwd; test -n "$PATH" && echo haspath; printf "no newline"'],
        env={"A": "1", "B": "two"},
        working_dir=tmpdir_path,
    )
    assert out == ["1-two", os.path.realpath(tmpdir_path), "haspath", "no newline"]
    assert ex["exit_code"] == 0


def test_run_default_working_dir_is_agent_cwd(agent):
    out, _, _, _ = run(agent.client, command="pwd")
    assert out == [os.path.realpath(agent.workdir)]


def test_run_one_megabyte_in_order(client):
    out, err, ex, _ = run(client, command="seq", args=["1", "200000"])
    assert ex["exit_code"] == 0 and err == []
    assert len(out) == 200000
    assert out == [str(i) for i in range(1, 200001)]


def test_run_long_line_and_binary_output(client):
    script = "import sys; sys.stdout.buffer.write(b'x' * 300000 + b'\\n' + b'\\xff\\xfeok\\r\\n')"
    out, _, ex, _ = run(client, command=sys.executable, args=["-c", script])
    assert ex["exit_code"] == 0
    assert out[0] == "x" * 300000
    assert out[1] == "\ufffd\ufffdok\r"


def test_run_timeout_kills_process_group(client, tmpdir_path):
    pidfile = os.path.join(tmpdir_path, "grandchild.pid")
    t0 = time.monotonic()
    out, _, ex, _ = run(
        client,
        command="sh",
        args=["-c", f"sleep 30 & echo $! > {pidfile}; echo started; wait"],
        timeout=0.5,
    )
    assert time.monotonic() - t0 < 5
    assert out == ["started"]
    assert ex["reason"] == "timed_out"
    assert ex["signal"] == 9 and ex["exit_code"] is None
    gpid = int(open(pidfile).read())

    wait_for(lambda: process_gone(gpid), 5)


def test_run_float_timeout_not_hit(client):
    _, _, ex, _ = run(client, command="true", timeout=5.5)
    assert ex == {"exit_code": 0, "signal": None, "oom_killed": False, "reason": "exited"}


def test_run_signaled(client):
    _, _, ex, _ = run(client, command="sh", args=["-c", "kill -TERM $$"])
    assert ex["signal"] == 15 and ex["exit_code"] is None and ex["reason"] == "signaled"


def test_run_missing_command(client):
    out, err, ex, _ = run(client, command="definitely-not-a-command-xyz")
    assert out == []
    assert len(err) == 1 and "definitely-not-a-command-xyz" in err[0]
    assert ex["exit_code"] == 127 and ex["reason"] == "exited"


def test_run_not_executable(client, tmpdir_path):
    p = os.path.join(tmpdir_path, "script.sh")
    with open(p, "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    os.chmod(p, 0o644)
    _, err, ex, _ = run(client, command=p)
    assert ex["exit_code"] == 126
    assert p in err[0]


def test_run_bad_working_dir(client):
    _, err, ex, _ = run(client, command="true", working_dir="/no/such/dir")
    assert ex["exit_code"] == 127
    assert "/no/such/dir" in err[0]


def test_run_as_current_user(client):
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    out, _, ex, _ = run(client, command="id", args=["-u"], user=me)
    assert ex["exit_code"] == 0 and out == [str(os.getuid())]
    out, _, ex, _ = run(client, command="id", args=["-u"], user={"uid": os.getuid(), "gid": os.getgid()})
    assert ex["exit_code"] == 0 and out == [str(os.getuid())]


def test_run_unknown_user(client):
    _, err, ex, _ = run(client, command="true", user="no-such-user-xyz")
    assert ex["exit_code"] != 0 and "no-such-user-xyz" in err[0]


def test_run_is_fast(client):
    run(client, command="true")
    t0 = time.monotonic()
    for _ in range(20):
        run(client, command="true")
    assert (time.monotonic() - t0) / 20 < 0.1


def test_run_chunked_request_body(client):
    body = json.dumps({"command": "echo", "args": ["chunked"]}).encode()

    def gen():
        yield body[:5]
        yield body[5:]

    r = client.post("/api/v1/processes/run", content=gen())
    events = parse_sse(r.text)
    assert [d["line"] for n, d in events if n == "output"] == ["chunked"]

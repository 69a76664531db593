"""The agent's fidelity (issues 9, 11, 18), on a real agent subprocess: whole process trees ended by kill,
timeout and stop however they detached; uploads written in place and only when complete; user-caused file
errors as 4xx; and the HTTP framing of every kind of answer, checked by parsing it with h11."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid

import h11
import pytest
from test_agent import Agent, _can_unshare, fparams, run, start, wait_for


@pytest.fixture(scope="module", params=["subreaper", "pid1"])
def agent(request):
    """The agent as on the host (orphans come back to it as a subreaper) and as PID 1 of a pid namespace."""
    if request.param == "pid1":
        if not _can_unshare():
            pytest.skip("needs unshare --pid (root)")
        a = Agent(prefix=["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
    else:
        a = Agent()
    yield a
    a.stop()


@pytest.fixture
def client(agent):
    return agent.client


def _tag() -> str:
    """A sleep duration no other process uses, to find a test's processes in /proc."""
    return f"{4000 + uuid.uuid4().int % 5000}.{uuid.uuid4().int % 1000:03d}"


def _running(tag: str) -> list[int]:
    """Live (not zombie) processes whose command line contains `tag` as an argument."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{p}/stat", "rb") as f:
                state = f.read().rsplit(b") ", 1)[1][:1]
        except OSError:
            continue
        if tag.encode() in argv and state not in (b"Z", b"X"):
            out.append(int(p))
    return out


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


# ------------------------------------------------------------------------------------------------ files


@pytest.fixture
def files_dir():
    d = f"/tmp/tle-agent-fid-{uuid.uuid4().hex[:8]}"
    os.makedirs(d)
    yield d
    subprocess.run(["rm", "-rf", d])


def test_write_keeps_identity_links_mode_and_owner(client, files_dir):
    f = os.path.join(files_dir, "f.txt")
    with open(f, "wb") as fh:
        fh.write(b"old content that is longer\n")
    link = os.path.join(files_dir, "hard")
    os.link(f, link)
    os.chmod(f, 0o640)
    if os.geteuid() == 0:
        os.chown(f, 1234, 5678)
    before = os.stat(f)
    assert client.put("/api/v1/files", params=fparams(f), content=b"new\n").status_code == 204
    after = os.stat(f)
    assert (after.st_ino, after.st_nlink, oct(after.st_mode), after.st_uid, after.st_gid) == (
        before.st_ino, 2, oct(before.st_mode), before.st_uid, before.st_gid)
    assert open(link, "rb").read() == b"new\n"
    # growing it, through a symlink
    sym = os.path.join(files_dir, "sym")
    os.symlink(f, sym)
    big = os.urandom(700_000)
    assert client.put("/api/v1/files", params=fparams(sym), content=big).status_code == 204
    assert os.path.islink(sym) and open(link, "rb").read() == big and os.stat(f).st_ino == before.st_ino
    assert sorted(os.listdir(files_dir)) == ["f.txt", "hard", "sym"]  # nothing left behind


def _raw_put(agent, path: str, head_extra: bytes, body: bytes) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.connect(agent.socket)
    s.sendall(b"PUT /api/v1/files?path=" + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + head_extra + b"\r\n" + body)
    time.sleep(0.3)
    s.close()


def test_interrupted_upload_leaves_the_old_file(agent, client, files_dir):
    f = os.path.join(files_dir, "keep.txt")
    with open(f, "wb") as fh:
        fh.write(b"precious\n")
    new = os.path.join(files_dir, "new.txt")
    for target in (f, new):
        _raw_put(agent, target, b"Content-Length: 100000\r\n", b"x" * 5000)
        _raw_put(agent, target, b"Transfer-Encoding: chunked\r\n", b"1000\r\n" + b"y" * 4096 + b"\r\n10\r\nzz")
        _raw_put(agent, target, b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n")  # no final chunk
    time.sleep(0.3)
    assert open(f, "rb").read() == b"precious\n"
    assert sorted(os.listdir(files_dir)) == ["keep.txt"]
    assert client.get("/api/v1/health").status_code == 200


def test_file_errors_are_4xx_naming_the_path(client, files_dir):
    f = os.path.join(files_dir, "afile")
    open(f, "w").close()
    loop_a, loop_b = os.path.join(files_dir, "la"), os.path.join(files_dir, "lb")
    os.symlink(loop_b, loop_a)
    os.symlink(loop_a, loop_b)
    cases = [
        ("put", files_dir, 400, "IS_DIRECTORY"),
        ("put", f + "/child", 400, "NOT_A_DIRECTORY"),
        ("get", f + "/child", 400, "NOT_A_DIRECTORY"),
        ("put", os.path.join(files_dir, "n" * 300), 400, "NAME_TOO_LONG"),
        ("get", os.path.join(files_dir, "n" * 300), 400, "NAME_TOO_LONG"),
        ("put", loop_a, 400, "SYMLINK_LOOP"),
        ("get", loop_a, 400, "SYMLINK_LOOP"),
    ]
    for method, path, status, code in cases:
        r = client.request(method.upper(), "/api/v1/files", params=fparams(path), content=b"x" if method == "put"
                           else None)
        assert r.status_code == status, (method, path, r.text)
        body = r.json()
        assert path in body["error"] and (code is None or body["code"] == code), body


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs")
def test_full_disk_and_read_only_are_4xx_and_keep_the_old_file(agent, client, files_dir):
    if agent.prefix:
        pytest.skip("the pid-namespace agent has its own mount namespace: it would not see the mount")
    mnt = os.path.join(files_dir, "small")
    os.makedirs(mnt)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mnt]).returncode != 0:
        pytest.skip("cannot mount tmpfs")
    try:
        f = os.path.join(mnt, "f")
        with open(f, "wb") as fh:
            fh.write(b"old" * 1000)
        r = client.put("/api/v1/files", params=fparams(f), content=os.urandom(2 * 1024 * 1024))
        assert r.status_code == 413 and r.json()["code"] == "NO_SPACE" and f in r.json()["error"]
        assert open(f, "rb").read() == b"old" * 1000
        r = client.put("/api/v1/files", params=fparams(os.path.join(mnt, "g")), content=os.urandom(1 << 21))
        assert r.status_code == 413 and os.listdir(mnt) == ["f"]
        assert subprocess.run(["mount", "-o", "remount,ro", mnt]).returncode == 0
        for target in (f, os.path.join(mnt, "new")):
            r = client.put("/api/v1/files", params=fparams(target), content=b"x")
            assert r.status_code == 403 and r.json()["code"] == "READ_ONLY_FILESYSTEM" and target in r.json()["error"]
        assert open(f, "rb").read() == b"old" * 1000
    finally:
        subprocess.run(["umount", "-l", mnt])


# ------------------------------------------------------------------------------------------------ framing


def _exchange(agent, requests: list[tuple]) -> list[tuple[int, dict, bytes]]:
    """Send the requests one after another on ONE connection and parse the answers with h11: any framing
    fault (a body on a HEAD or 204, a wrong length, a bad chunk) raises, and no byte may be left over."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(agent.socket)
    s.settimeout(10)
    conn = h11.Connection(h11.CLIENT)
    out = []
    try:
        for method, target, headers, body in requests:
            hdrs = [("Host", "agent"), *headers]
            if body is not None:
                hdrs.append(("Content-Length", str(len(body))))
            wire = conn.send(h11.Request(method=method, target=target, headers=hdrs))
            if body is not None:
                wire += conn.send(h11.Data(data=body))
            wire += conn.send(h11.EndOfMessage())  # b"" without a body: the agent may have answered already
            s.sendall(wire)
            status, resp_headers, data = 0, {}, b""
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(s.recv(65536))
                    continue
                if isinstance(ev, h11.InformationalResponse):
                    continue
                if isinstance(ev, h11.Response):
                    status = ev.status_code
                    resp_headers = {k.decode().lower(): v.decode() for k, v in ev.headers}
                elif isinstance(ev, h11.Data):
                    data += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
            out.append((status, resp_headers, data))
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                break
            conn.start_next_cycle()
        s.setblocking(False)
        try:
            extra = s.recv(65536)
        except BlockingIOError:
            extra = b""
        assert extra == b"", f"bytes left on the connection: {extra[:200]!r}"
    finally:
        s.close()
    return out


def test_every_kind_of_answer_is_framed_right(agent, files_dir):
    f = os.path.join(files_dir, "h.txt")
    with open(f, "wb") as fh:
        fh.write(b"0123456789")
    q = "?path=" + f
    run_body = b'{"command": "sh", "args": ["-c", "echo hi"]}'
    reqs = [
        ("HEAD", "/api/v1/info", [], None),
        ("GET", "/api/v1/info", [], None),
        ("HEAD", "/api/v1/health", [], None),
        ("HEAD", "/api/v1/processes", [], None),
        ("HEAD", "/api/v1/files" + q, [], None),
        ("GET", "/api/v1/files" + q, [], None),
        ("HEAD", "/api/v1/files?path=/proc/self/status", [], None),
        ("GET", "/api/v1/files?path=/proc/self/status", [], None),  # chunked
        ("HEAD", "/api/v1/nope", [], None),  # 404 to a HEAD: no body
        ("HEAD", "/api/v1/processes/1/restart", [], None),  # 405 to a HEAD
        ("PUT", "/api/v1/files" + q, [("Expect", "100-continue")], b"abc"),  # 100 then 204
        ("DELETE", "/api/v1/files?path=" + f, [], None),  # 204
        ("GET", "/api/v1/files" + q, [], None),  # 404 JSON
        ("POST", "/api/v1/processes/run", [("Content-Type", "application/json")], run_body),  # SSE, chunked
        ("POST", "/api/v1/processes", [("Content-Type", "application/json")],
         b'{"command": "sh", "args": ["-c", "echo started"]}'),  # 201
    ]
    res = _exchange(agent, reqs)
    assert len(res) == len(reqs)
    st = [r[0] for r in res]
    assert st == [200, 200, 200, 200, 200, 200, 200, 200, 404, 405, 204, 204, 404, 200, 201]
    assert res[0][2] == b"" and res[1][2].startswith(b"{") and res[0][1]["content-length"] == str(len(res[1][2]))
    assert res[4][2] == b"" and res[4][1]["content-length"] == "10" and res[5][2] == b"0123456789"
    assert res[6][2] == b"" and res[7][1].get("transfer-encoding") == "chunked" and b"Name:" in res[7][2]
    assert res[8][2] == b"" and res[9][2] == b"" and "content-length" not in res[10][1]
    assert b"event: exited" in res[13][2]


def test_head_then_start_runs_one_process(agent, client):
    tag = _tag()
    body = json.dumps({"command": "sleep", "args": [tag]}).encode()
    res = _exchange(agent, [("HEAD", "/api/v1/info", [], None),
                            ("POST", "/api/v1/processes", [("Content-Type", "application/json")], body)])
    assert [r[0] for r in res] == [200, 201]
    procs = [p for p in client.get("/api/v1/processes").json()["processes"] if p["args"] == [tag]]
    assert len(procs) == 1, procs
    # (a process answered as started may still be inside execve for a moment: its cmdline reads empty)
    wait_for(lambda: len(_running(tag)) == 1, timeout=5)
    time.sleep(0.3)
    assert len(_running(tag)) == 1
    client.delete(f"/api/v1/processes/{procs[0]['pid']}")


def test_write_over_a_running_program_replaces_it(client, files_dir):
    """ETXTBSY: a running program's file cannot be written in place; it is replaced, mode kept."""
    prog = os.path.join(files_dir, "prog")
    with open("/bin/sleep", "rb") as src, open(prog, "wb") as dst:
        dst.write(src.read())
    os.chmod(prog, 0o751)
    running = subprocess.Popen([prog, "30"])
    try:
        time.sleep(0.2)
        r = client.put("/api/v1/files", params=fparams(prog), content=b"#!/bin/sh\necho replaced\n")
        assert r.status_code == 204, r.text
        assert open(prog, "rb").read() == b"#!/bin/sh\necho replaced\n"
        assert oct(os.stat(prog).st_mode & 0o777) == "0o751" and os.listdir(files_dir) == ["prog"]
    finally:
        running.kill()
        running.wait()


def test_concurrent_uploads_of_one_file_do_not_mix(agent, files_dir):
    from concurrent.futures import ThreadPoolExecutor

    f = os.path.join(files_dir, "race.bin")
    blobs = [bytes([i]) * (2 * 1024 * 1024 + i) for i in range(8)]

    def put(blob: bytes) -> int:
        with agent.make_client() as c:
            return c.put("/api/v1/files", params=fparams(f), content=blob).status_code

    with ThreadPoolExecutor(8) as ex:
        assert list(ex.map(put, blobs)) == [204] * 8
    assert open(f, "rb").read() in blobs


def test_streams_errors_and_close_are_framed_right(agent, client):
    p = start(client, command="sh", args=["-c", "echo one; echo two >&2"])
    wait_for(lambda: client.get(f"/api/v1/processes/{p['pid']}").json()["status"] == "exited")
    json_hdr = [("Content-Type", "application/json")]
    reqs = [
        ("GET", f"/api/v1/processes/{p['pid']}/output/follow", [], None),  # SSE replay then eof, chunked
        ("HEAD", f"/api/v1/processes/{p['pid']}/output/follow", [], None),  # head only, at once
        ("GET", f"/api/v1/processes/{p['pid']}/stdout", [], None),
        ("GET", "/api/v1/tunnels/tcp?port=1", [], None),  # 426 without the upgrade headers
        ("POST", "/api/v1/processes", json_hdr, b"{not json"),  # 400
        ("POST", f"/api/v1/processes/{p['pid']}/signal", json_hdr, b'{"signal": 0}'),
        ("DELETE", f"/api/v1/processes/{p['pid']}", [], None),  # 204
        ("GET", "/api/v1/health", [("Connection", "close")], None),  # answered, then closed
    ]
    res = _exchange(agent, reqs)
    assert [r[0] for r in res] == [200, 200, 200, 426, 400, 200, 204, 200]
    assert b"event: eof" in res[0][2] and b"one" in res[0][2] and res[1][2] == b""
    assert res[1][1].get("transfer-encoding") == "chunked"
    assert res[7][1].get("connection") == "close"


def test_pty_delete_ends_the_detached_tree(client):
    tag = _tag()
    script = f"setsid sleep {tag} & (sleep {tag} &); wait"
    r = client.post("/api/v1/pty", json={"command": "sh", "args": ["-c", script]})
    assert r.status_code == 201, r.text
    wait_for(lambda: len(_running(tag)) == 2, timeout=5)
    assert client.delete(f"/api/v1/pty/{r.json()['session_id']}").status_code == 204
    wait_for(lambda: not _running(tag), timeout=5)

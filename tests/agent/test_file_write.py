"""Uploads (file_write) written in place and only when complete, and user-caused file errors as 4xx
(issues 11, 18).

Each test runs against an agent subprocess in both modes (agent_helpers.agent_in_mode)."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
from agent_helpers import agent_in_mode, fparams


@pytest.fixture(scope="module", params=["subreaper", "pid1"])
def agent(request):
    """The agent as on the host (orphans come back to it as a subreaper) and as PID 1 of a pid namespace."""
    a = agent_in_mode(request.param)
    yield a
    a.stop()


# ------------------------------------------------------------------------------------------------ files


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

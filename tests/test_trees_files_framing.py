"""Issues 9, 11 and 18 on a real emulator, real containers and the real SDK (sync and async): kill and
run(timeout) end whole process trees however they detached; write_file writes in place (bind mounts, hard
links, mode, owner) and an upload cut at the client leaves the old file; user-caused file errors are 4xx;
a HEAD through the proxy leaves nothing on the pooled connection, so a following start_process runs once."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from tensorlake.sandbox import AsyncSandbox, Sandbox
from tensorlake.sandbox.exceptions import RemoteAPIError

from sdk_shim.launcher import EmulatorProcess

T = 60.0

# Live (not zombie) processes of the sandbox whose argv has the tag; printed as a JSON list of pids.
FIND = """
import json, os, sys
out = []
for p in os.listdir('/proc'):
    if not p.isdigit() or int(p) == os.getpid(): continue
    try:
        argv = open('/proc/%s/cmdline' % p, 'rb').read().split(b'\\0')
        state = open('/proc/%s/stat' % p, 'rb').read().rsplit(b') ', 1)[1][:1]
    except OSError: continue
    if sys.argv[1].encode() in argv and state not in (b'Z', b'X'): out.append(int(p))
print(json.dumps(out))
"""
DAEMONIZE = ("import os,sys\nif os.fork(): os._exit(0)\nos.setsid()\nif os.fork(): os._exit(0)\n"
             "os.chdir('/')\nfd=os.open(os.devnull,os.O_RDWR)\nfor i in (0,1,2): os.dup2(fd,i)\n"
             "os.execvp('sleep',['sleep',sys.argv[1]])")


def _tag() -> str:
    return f"{4000 + uuid.uuid4().int % 5000}.{uuid.uuid4().int % 1000:03d}"


def _detaching(tag: str) -> dict[str, list[str]]:
    return {
        "setsid": ["-c", f"setsid sleep {tag} & wait"],
        "double_fork": ["-c", f"(sleep {tag} &); sleep 300"],
        "new_group": ["-c", f"python3 -c 'import os,subprocess,sys; subprocess.Popen([\"sleep\", sys.argv[1]], "
                            f"preexec_fn=os.setpgrp).wait()' {tag}"],
        "nohup": ["-c", f"nohup sleep {tag} >/dev/null 2>&1 & wait"],
        "daemon": ["-c", f"python3 -c \"$0\" {tag}; sleep 300", DAEMONIZE],
    }


def _find(sb: Sandbox, tag: str) -> list[int]:
    r = sb.run("python3", ["-c", FIND, tag], timeout=20)
    return json.loads(r.stdout)


def _until(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.2)


def test_kill_ends_trees_however_they_detached(sb: Sandbox) -> None:
    tags = {how: _tag() for how in _detaching("0")}
    procs = {how: sb.start_process("sh", _detaching(tag)[how]) for how, tag in tags.items()}
    keep = _tag()
    separate = sb.start_process("sleep", [keep])
    for tag in tags.values():
        assert _until(lambda t=tag: _find(sb, t)), tag
    time.sleep(0.5)
    for p in procs.values():
        sb.kill_process(p.pid)
    for how, tag in tags.items():
        assert _until(lambda t=tag: not _find(sb, t)), f"{how}: {_find(sb, tag)} survived the kill"
    assert _find(sb, keep), "a separately started process is its own tree"
    sb.kill_process(separate.pid)
    assert _until(lambda: not _find(sb, keep))


def test_issue_example_setsid_then_kill(sb: Sandbox) -> None:
    p = sb.start_process("sh", ["-c", "setsid sleep 4442 & wait"])
    assert _until(lambda: _find(sb, "4442"))
    sb.kill_process(p.pid)
    assert _until(lambda: not _find(sb, "4442"))


def test_run_timeout_ends_the_detached_tree(sb: Sandbox) -> None:
    tag = _tag()
    r = sb.run("sh", ["-c", f"setsid sleep {tag} & (sleep {tag} &); nohup sleep {tag} >/dev/null & sleep 300"],
               timeout=1.5)
    assert r.timed_out
    assert _until(lambda: not _find(sb, tag))


def test_write_file_in_place_on_bind_mounts_links_mode_owner(sb: Sandbox) -> None:
    for path in ("/etc/hosts", "/etc/resolv.conf"):
        old = sb.read_file(path).value
        sb.write_file(path, old)  # the same bytes (the issue's second example)
        sb.write_file(path, old + b"10.9.8.7 h\n")
        assert sb.read_file(path).value == old + b"10.9.8.7 h\n"
        assert sb.run("grep", ["-c", "10.9.8.7", path]).stdout.strip() == "1"
        sb.write_file(path, old)
    setup = ("mkdir -p /srv/id && printf 'first version\\n' > /srv/id/f && ln -f /srv/id/f /srv/id/link && "
             "chmod 0640 /srv/id/f && chown 1234:5678 /srv/id/f && stat -c '%i %h %a %u %g' /srv/id/f")
    before = sb.run("sh", ["-c", setup]).stdout.split()
    sb.write_file("/srv/id/f", b"second\n")
    after = sb.run("stat", ["-c", "%i %h %a %u %g", "/srv/id/f"]).stdout.split()
    assert after == before and after[1:] == ["2", "640", "1234", "5678"]
    assert sb.read_file("/srv/id/link").value == b"second\n"
    assert sb.run("ls", ["-A", "/srv/id"]).stdout.split() == ["f", "link"]


def test_user_caused_file_errors_are_4xx(sb: Sandbox) -> None:
    sb.write_file("/srv/plain", b"x")
    cases = [
        (lambda: sb.write_file("/srv", b"x"), 400, "IS_DIRECTORY", "/srv"),
        (lambda: sb.write_file("/srv/plain/child", b"x"), 400, "NOT_A_DIRECTORY", "/srv/plain/child"),
        (lambda: sb.read_file("/srv/plain/child"), 400, "NOT_A_DIRECTORY", "/srv/plain/child"),
        (lambda: sb.write_file("/srv/" + "n" * 300, b"x"), 400, "NAME_TOO_LONG", "n" * 300),
        (lambda: sb.write_file("/proc/sys/kernel/hostname", b"x"), 403, "READ_ONLY_FILESYSTEM", "/proc/sys"),
    ]
    sb.run("sh", ["-c", "ln -sf /srv/lb /srv/la; ln -sf /srv/la /srv/lb"])
    cases.append((lambda: sb.write_file("/srv/la", b"x"), 400, "SYMLINK_LOOP", "/srv/la"))
    for call, status, code, named in cases:
        with pytest.raises(RemoteAPIError) as err:
            call()
        assert (err.value.status_code, err.value.code) == (status, code), str(err.value)
        assert named in str(err.value)


def _raw_cut_upload(emulator: EmulatorProcess, sandbox_id: str, path: str, chunked: bool) -> None:
    """A PUT whose client dies in the middle of the body, on a raw socket to the proxy."""
    u = urlparse(emulator.proxy_url)
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    head = (f"PUT /api/v1/files?path={path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
            f"X-Tensorlake-Sandbox-Id: {sandbox_id}\r\n")
    if chunked:
        s.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"4000\r\n" + b"C" * 0x4000 + b"\r\n"
                  + b"100\r\n" + b"D" * 10)
    else:
        s.sendall((head + "Content-Length: 1000000\r\n\r\n").encode() + b"L" * 200_000)
    time.sleep(0.5)
    s.close()


def test_interrupted_uploads_leave_the_old_file(sb: Sandbox, emulator: EmulatorProcess) -> None:
    sb.write_file("/srv/up/keep.txt", b"precious\n")
    for chunked in (True, False):
        _raw_cut_upload(emulator, sb.sandbox_id, "/srv/up/keep.txt", chunked)
        _raw_cut_upload(emulator, sb.sandbox_id, "/srv/up/new.txt", chunked)
    time.sleep(1.0)
    assert sb.read_file("/srv/up/keep.txt").value == b"precious\n"
    assert sb.run("ls", ["-A", "/srv/up"]).stdout.split() == ["keep.txt"]


def test_head_then_start_process_runs_once(sb: Sandbox, emulator: EmulatorProcess) -> None:
    u = urlparse(emulator.proxy_url)
    tag = _tag()
    for _ in range(3):
        s = socket.create_connection((u.hostname, u.port), timeout=10)
        s.sendall((f"HEAD /api/v1/info HTTP/1.1\r\nHost: {u.hostname}\r\nX-Tensorlake-Sandbox-Id: {sb.sandbox_id}"
                   "\r\nConnection: close\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n"), data
        sb.start_process("sleep", [tag])
    started = [p for p in sb.list_processes() if p.args == [tag]]
    assert len(started) == 3 and _until(lambda: len(_find(sb, tag)) == 3)
    for p in started:
        sb.kill_process(p.pid)


async def test_async_kill_tree_and_in_place_write(emulator: EmulatorProcess) -> None:
    sandbox = await AsyncSandbox.create(cpus=1.0, memory_mb=512, request_timeout=T)
    try:
        tag = _tag()
        p = await sandbox.start_process("sh", ["-c", f"(setsid sleep {tag} &); setsid sleep {tag} & wait"])

        async def find() -> list[int]:
            return json.loads((await sandbox.run("python3", ["-c", FIND, tag])).stdout)

        for _ in range(50):  # both sleeps detached
            if len(await find()) >= 2:
                break
            await asyncio.sleep(0.2)
        await sandbox.kill_process(p.pid)
        for _ in range(50):
            if not await find():
                break
            await asyncio.sleep(0.2)
        assert await find() == []
        r = await sandbox.run("sh", ["-c", f"setsid sleep {tag} & sleep 300"], timeout=1)
        assert r.timed_out
        await asyncio.sleep(0.5)
        assert await find() == []
        old = (await sandbox.read_file("/etc/hosts")).value
        await sandbox.write_file("/etc/hosts", old + b"10.9.8.7 h\n")
        assert (await sandbox.read_file("/etc/hosts")).value == old + b"10.9.8.7 h\n"
        with pytest.raises(RemoteAPIError) as err:
            await sandbox.write_file("/etc", b"x")
        assert err.value.status_code == 400 and err.value.code == "IS_DIRECTORY"
    finally:
        await sandbox.terminate()


def test_kill_ends_the_tree_after_suspend_and_resume(emulator: EmulatorProcess) -> None:
    """CRIU recreates every process (new start times): the trees are still known after a resume."""
    sandbox = Sandbox.create(name=f"trees-{uuid.uuid4().hex[:8]}", memory_mb=256, request_timeout=T)
    try:
        tag = _tag()
        p = sandbox.start_process("sh", ["-c", f"(setsid sleep {tag} &); setsid sleep {tag} & wait"])
        assert _until(lambda: len(_find(sandbox, tag)) == 2)
        sandbox.suspend()
        sandbox.resume()
        assert len(_find(sandbox, tag)) == 2
        sandbox.kill_process(p.pid)
        assert _until(lambda: not _find(sandbox, tag))
    finally:
        sandbox.terminate()


def test_proxy_answers_a_non_retried_error_when_the_agent_may_have_acted(emulator: EmulatorProcess) -> None:
    """The container dies while the agent holds a request (a stdin write blocked on a full pipe): the proxy
    must not answer a 503 (the SDK would send it again); connection failures before sending still are 503."""
    import subprocess
    import threading

    import httpx

    sandbox = Sandbox.create(memory_mb=256, request_timeout=T)
    try:
        p = sandbox.start_process("sleep", ["300"], stdin_mode="pipe")  # never reads its stdin
        result: dict = {}

        def post() -> None:
            r = httpx.post(f"{emulator.proxy_url}/api/v1/processes/{p.pid}/stdin", content=b"z" * (4 << 20),
                           headers={"X-Tensorlake-Sandbox-Id": sandbox.sandbox_id}, timeout=30)
            result["status"], result["body"] = r.status_code, r.json()

        t = threading.Thread(target=post)
        t.start()
        time.sleep(1.5)
        assert t.is_alive(), result  # the agent holds the request
        subprocess.run(["docker", "kill", f"tle-{sandbox.sandbox_id}"], check=True, capture_output=True)
        t.join(30)
        assert result["status"] not in (429, 502, 503, 504), result
        assert result["status"] == 500 and result["body"]["code"] == "SANDBOX_CONNECTION_LOST", result
    finally:
        sandbox.terminate()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A data folder with a short path: the agent's socket path under it must fit AF_UNIX's 108 bytes, which
    pytest's tmp_path under xdist does not."""
    d = Path(tempfile.mkdtemp(prefix="tle-cut-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_upload_cut_by_an_emulator_crash_leaves_the_old_file(short_dir: Path) -> None:
    """kill -9 of the emulator (the proxy) in the middle of an upload: the agent sees the body end early."""
    tmp_path = short_dir
    emu = EmulatorProcess(data_dir=tmp_path / "data", extra_env={"TLE_TERMINATE_ON_EXIT": "0"}).start()
    url = emu.api_url
    try:
        sandbox = Sandbox.create(api_url=url, memory_mb=256, request_timeout=T)
    except Exception:
        emu.stop()
        raise AssertionError("create failed; emulator log:\n" + emu.log_tail(60)) from None
    sid = sandbox.sandbox_id
    emu2 = None
    try:
        sandbox.write_file("/srv/crash/keep.txt", b"precious\n")
        u = urlparse(emu.proxy_url)
        socks = []
        for path, chunked in (("/srv/crash/keep.txt", False), ("/srv/crash/keep.txt", True),
                              ("/srv/crash/new.txt", False)):
            s = socket.create_connection((u.hostname, u.port), timeout=10)
            head = (f"PUT /api/v1/files?path={path} HTTP/1.1\r\nHost: {u.hostname}\r\n"
                    f"X-Tensorlake-Sandbox-Id: {sid}\r\n")
            if chunked:
                s.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"100000\r\n" + b"C" * 300_000)
            else:
                s.sendall((head + "Content-Length: 10000000\r\n\r\n").encode() + b"L" * 300_000)
            socks.append(s)
        time.sleep(1.0)
        assert emu.proc is not None
        emu.proc.kill()  # the proxy dies with the bodies half through it
        emu.proc.wait(30)
        for s in socks:
            s.close()
        emu2 = EmulatorProcess(data_dir=tmp_path / "data", api_port=emu.api_port, proxy_port=emu.proxy_port).start()
        again = Sandbox.connect(sid, api_url=url, request_timeout=T)
        assert again.read_file("/srv/crash/keep.txt").value == b"precious\n"
        assert again.run("ls", ["-A", "/srv/crash"]).stdout.split() == ["keep.txt"]
    finally:
        if emu2 is None:  # failed before the restart: whichever emulator is (or can be) up cleans up
            alive = emu.proc is not None and emu.proc.poll() is None
            emu2 = emu if alive else EmulatorProcess(data_dir=tmp_path / "data", api_port=emu.api_port,
                                                     proxy_port=emu.proxy_port).start()
        Sandbox.connect(sid, api_url=url, request_timeout=T).terminate()
        emu2.stop()

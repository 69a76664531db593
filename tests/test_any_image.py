"""A sandbox in any Linux image of the host's architecture (issue 13 part 1): processes, files, PTY,
tunnels, suspend/resume and checkpoint/restore in an image with nothing but a static busybox, in a
musl-based one without a shell, in one holding nothing but the user's static binary, and in the default.

Images are built offline (tests/images_offline.py). The real SDK against a real emulator. While the
emulator still runs the Python agent (it needs python3 in the image), the images without Python skip
with that reason: the create's error names python3 (the launch mode is what decides, not a guess).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tensorlake.sandbox import Sandbox
from tensorlake.sandbox.exceptions import SandboxError

from sdk_shim.launcher import EmulatorProcess
from tests import images_offline

T = 60.0  # request timeouts
W = 60.0  # suspend / resume / checkpoint
PORT = 8000
MARK = b"served-from-any-image"

pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True)
class Profile:
    """How to do each thing in one image: a (command, args) per role, all with what the image has."""

    kind: str
    image: str | None  # None: the emulator's default image
    echo: tuple[str, list[str]]  # prints "hello any image"
    sleeper: tuple[str, list[str]]  # runs until killed
    counter: tuple[str, list[str]]  # prints 0, 1, 2, ... every 0.1 s
    server: tuple[str, list[str]]  # answers a connection to 127.0.0.1:PORT with MARK in its reply
    pty: tuple[str, list[str]]  # a terminal program: each input line comes back with "42" on it
    pty_input: bytes
    files_dir: str  # a folder the image has, for file tests


def _mini(path: str, kind: str, image: str) -> Profile:
    return Profile(kind, image, (path, ["echo", "hello", "any", "image"]), (path, ["sleep", "300"]),
                   (path, ["count"]), (path, ["serve", str(PORT)]), (path, ["cat"]), b"line-42\n",
                   "/tmp" if kind == "musl" else "/")


def _shell_profile(kind: str, image: str | None, server: tuple[str, list[str]]) -> Profile:
    return Profile(kind, image, ("echo", ["hello", "any", "image"]), ("sleep", ["300"]),
                   ("sh", ["-c", "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done"]), server,
                   ("sh", []), b"echo line-$((6*7))\n", "/tmp")


def _profile(kind: str) -> Profile:
    try:
        if kind == "busybox":
            img = images_offline.busybox()
            return _shell_profile(kind, img.ref, ("httpd", ["-f", "-p", f"127.0.0.1:{PORT}", "-h", "/tmp/www"]))
        if kind in ("musl", "binary"):
            img = images_offline.musl() if kind == "musl" else images_offline.binary()
            assert img.mini is not None
            return _mini(img.mini, kind, img.ref)
    except images_offline.ImageBuildError as exc:
        pytest.skip(f"offline test image not built: {exc}")
    return _shell_profile(kind, None, ("python3", ["-m", "http.server", str(PORT), "--bind", "127.0.0.1",
                                                   "--directory", "/tmp/www"]))


def _create(p: Profile, **kw: object) -> Sandbox:
    try:
        return Sandbox.create(image=p.image, cpus=1.0, memory_mb=256, request_timeout=T, startup_timeout=60, **kw)
    except SandboxError as exc:
        if "python3" in str(exc):  # the emulator still launches the Python agent, which needs python3
            pytest.skip(f"the emulator still runs the Python agent, which {p.kind} cannot hold: {exc}")
        raise


@pytest.fixture(scope="module", params=["busybox", "musl", "binary", "default"])
def profile(request: pytest.FixtureRequest, emulator: EmulatorProcess) -> Profile:
    return _profile(request.param)


@pytest.fixture(scope="module")
def sbx(profile: Profile) -> Iterator[Sandbox]:
    sandbox = _create(profile)
    yield sandbox
    sandbox.terminate()


def _lines(sb: Sandbox, pid: int) -> list[int]:
    return [int(ln) for ln in sb.get_stdout(pid).lines if ln.strip()]


def _count_past(sb: Sandbox, pid: int, than: int, timeout: float = 15.0) -> list[int]:
    """The counter's output once it has gone past `than`; it must count 0, 1, 2, ... without a restart."""
    deadline = time.monotonic() + timeout
    while True:
        vals = _lines(sb, pid)
        if vals and vals[-1] > than:
            assert vals == list(range(len(vals))), f"the counter restarted or skipped: {vals[:5]}...{vals[-5:]}"
            return vals
        assert time.monotonic() < deadline, f"the counter did not go past {than}: {vals[-3:]}"
        time.sleep(0.1)


# ---- processes ------------------------------------------------------------------------------------


def test_run_output_and_exit_code(sbx: Sandbox, profile: Profile) -> None:
    res = sbx.run(profile.echo[0], profile.echo[1], timeout=30)
    assert res.exit_code == 0 and res.stdout.strip() == "hello any image", res


def test_start_list_kill(sbx: Sandbox, profile: Profile) -> None:
    proc = sbx.start_process(profile.sleeper[0], profile.sleeper[1])
    assert proc.pid in [p.pid for p in sbx.list_processes()]
    sbx.kill_process(proc.pid)
    deadline = time.monotonic() + 15
    while sbx.get_process(proc.pid).status == "running":
        assert time.monotonic() < deadline, "the killed process still runs"
        time.sleep(0.1)


def test_follow_output_of_a_running_process(sbx: Sandbox, profile: Profile) -> None:
    proc = sbx.start_process(profile.counter[0], profile.counter[1])
    try:
        _count_past(sbx, proc.pid, 5)
    finally:
        sbx.kill_process(proc.pid)


# ---- files ----------------------------------------------------------------------------------------


def test_files_write_read_list_delete(sbx: Sandbox, profile: Profile) -> None:
    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit, every byte value
    path = f"{profile.files_dir.rstrip('/')}/any-image-{uuid.uuid4().hex[:6]}.bin"
    sbx.write_file(path, data)
    assert sbx.read_file(path).value == data
    names = [e.name for e in sbx.list_directory(profile.files_dir).entries]
    assert path.rsplit("/", 1)[1] in names
    sbx.delete_file(path)
    assert path.rsplit("/", 1)[1] not in [e.name for e in sbx.list_directory(profile.files_dir).entries]


# ---- PTY and tunnels ------------------------------------------------------------------------------


def test_pty_round_trip(sbx: Sandbox, profile: Profile) -> None:
    got = bytearray()
    cond = threading.Condition()

    def on_data(chunk: bytes) -> None:
        with cond:
            got.extend(chunk)
            cond.notify_all()

    pty = sbx.create_pty(profile.pty[0], profile.pty[1], on_data=on_data, connect_timeout=10)
    try:
        pty.send_input(profile.pty_input)
        with cond:
            # The terminal echoes the input once; the program's answer is a second "line-42".
            assert cond.wait_for(lambda: got.count(b"line-42") >= 2 if b"$((" not in profile.pty_input
                                 else b"line-42" in got, 20), bytes(got)
    finally:
        pty.kill()


def test_tunnel_to_a_server_in_the_image(sbx: Sandbox, profile: Profile) -> None:
    if profile.kind != "musl" and profile.kind != "binary":
        sbx.write_file("/tmp/www/index.html", MARK + b"\n")
    proc = sbx.start_process(profile.server[0], profile.server[1])
    try:
        with sbx.create_tunnel(PORT, local_port=0, connect_timeout=10) as tunnel:
            deadline = time.monotonic() + 20
            while True:  # until the server listens (a closed port drops the tunnel's connection)
                reply = _exchange(tunnel.local_port)
                if reply:
                    break
                assert time.monotonic() < deadline, "no answer through the tunnel"
                time.sleep(0.2)
        expected = b"mini-served" if profile.kind in ("musl", "binary") else MARK
        assert expected in reply, reply
    finally:
        sbx.kill_process(proc.pid)


def _exchange(port: int) -> bytes:
    """One request through the tunnel's local port and the whole reply; b"" when the sandbox side drops
    the connection (nothing listens there yet)."""
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
            c.sendall(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
            while chunk := c.recv(65536):
                data += chunk
    except OSError:
        return b""
    return data


# ---- suspend / resume, checkpoint / restore -------------------------------------------------------


def test_suspend_resume_keeps_a_running_process(profile: Profile) -> None:
    sb = _create(profile, name=f"any-{profile.kind}-{uuid.uuid4().hex[:6]}")
    try:
        proc = sb.start_process(profile.counter[0], profile.counter[1])
        before = _count_past(sb, proc.pid, 3)[-1]
        sb.suspend(timeout=W)
        sb.resume(timeout=W)
        _count_past(sb, proc.pid, before + 5)
    finally:
        sb.terminate()


def test_checkpoint_restore_into_a_new_sandbox(profile: Profile) -> None:
    src = _create(profile)
    try:
        proc = src.start_process(profile.counter[0], profile.counter[1])
        _count_past(src, proc.pid, 3)
        snap = src.checkpoint(timeout=W)
        assert snap is not None
        at = _lines(src, proc.pid)[-1]
        restored = Sandbox.create(snapshot_id=snap.snapshot_id, request_timeout=T)
        try:
            _count_past(restored, proc.pid, at + 3)
            assert restored.run(profile.echo[0], profile.echo[1], timeout=30).stdout.strip() == "hello any image"
        finally:
            restored.terminate()
    finally:
        src.terminate()

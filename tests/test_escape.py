"""Security, kind 1 of issue 9: nothing a sandbox writes in the folder it shares with the host is
followed or trusted by the host; the agent channel cannot be redirected or impersonated; agent sockets
are out of other local users' reach; nothing the sandbox wrote there outlives it.

Each attack is run as a process inside the sandbox would run it, then probed through the proxy with a
fresh connection (the proxy keeps idle agent connections for 5 s, so each probe waits that out).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from tensorlake.sandbox import Sandbox

from sdk_shim.launcher import EmulatorProcess

T = 60.0
IDLE_POOL_EXPIRY = 5.5  # httpx's keepalive expiry for the proxy's agent pool, plus a margin

# A server that answers every request with 200 "PWNED": an impersonated agent.
FAKE_AGENT = (
    "import os, socket\n"
    "p = '/.tle/run/agent.sock'\n"
    "os.path.lexists(p) and os.unlink(p)\n"
    "s = socket.socket(socket.AF_UNIX); s.bind(p); os.chmod(p, 0o666); s.listen(16)\n"
    "open('/tmp/fake-ready', 'w').close()\n"
    "while True:\n"
    "    c, _ = s.accept(); c.recv(65536)\n"
    "    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\nPWNED'); c.close()\n"
)


def _probe(emulator: EmulatorProcess, sandbox_id: str, path: str) -> httpx.Response:
    with httpx.Client(timeout=10.0) as client:
        return client.get(f"{emulator.proxy_url}{path}", headers={"Host": f"{sandbox_id}.local"})


def _assert_not_docker_nor_fake(r: httpx.Response) -> None:
    assert r.text.strip() != "OK" and "api-version" not in {k.lower() for k in r.headers}, r.text
    assert "Docker" not in r.headers.get("server", ""), r.headers
    assert "PWNED" not in r.text


def _run_dir(emulator: EmulatorProcess, sandbox_id: str) -> Path:
    return emulator.data_dir / "run" / sandbox_id


@pytest.fixture
def victim(emulator: EmulatorProcess):
    sandbox = Sandbox.create(cpus=0.5, memory_mb=256, request_timeout=T)
    yield sandbox
    sandbox.terminate()


@pytest.fixture
def attacker(emulator: EmulatorProcess):
    sandbox = Sandbox.create(cpus=0.5, memory_mb=256, request_timeout=T)
    yield sandbox
    sandbox.terminate()


def test_symlink_to_host_docker_socket_is_not_followed(emulator: EmulatorProcess, attacker: Sandbox) -> None:
    r = attacker.run("sh", ["-c", "rm /.tle/run/agent.sock; "
                                  "ln -s ../../../../../../../../../../var/run/docker.sock /.tle/run/agent.sock; "
                                  "ls -l /.tle/run"])
    assert r.exit_code == 0 and "docker.sock" in r.stdout
    time.sleep(IDLE_POOL_EXPIRY)
    for path in ("/_ping", "/version", "/containers/json"):
        r2 = _probe(emulator, attacker.sandbox_id, path)
        _assert_not_docker_nor_fake(r2)
        assert r2.status_code == 503 and r2.json()["code"] == "SANDBOX_NOT_READY"
    # Also an absolute link.
    attacker_dir = _run_dir(emulator, attacker.sandbox_id)
    os.unlink(attacker_dir / "agent.sock")
    os.symlink("/var/run/docker.sock", attacker_dir / "agent.sock")
    _assert_not_docker_nor_fake(_probe(emulator, attacker.sandbox_id, "/_ping"))


def test_symlink_to_another_sandboxes_agent_is_not_followed(emulator: EmulatorProcess, victim: Sandbox,
                                                            attacker: Sandbox) -> None:
    victim.write_file("/root/secret", b"victim-secret")
    r = attacker.run("sh", ["-c", f"rm /.tle/run/agent.sock; ln -s ../{victim.sandbox_id}/agent.sock "
                                  "/.tle/run/agent.sock"])
    assert r.exit_code == 0
    time.sleep(IDLE_POOL_EXPIRY)
    r2 = _probe(emulator, attacker.sandbox_id, "/api/v1/files?path=/root/secret")
    assert "victim-secret" not in r2.text
    assert r2.status_code == 503
    assert victim.read_file("/root/secret", ).value == b"victim-secret"  # the victim is untouched


@pytest.mark.parametrize("replacement", ["fifo", "regular file", "directory"])
def test_non_socket_entries_are_refused(emulator: EmulatorProcess, attacker: Sandbox, replacement: str) -> None:
    make = {"fifo": "mkfifo /.tle/run/agent.sock", "regular file": "echo x > /.tle/run/agent.sock",
            "directory": "mkdir /.tle/run/agent.sock"}[replacement]
    assert attacker.run("sh", ["-c", f"rm /.tle/run/agent.sock; {make}"]).exit_code == 0
    time.sleep(IDLE_POOL_EXPIRY)
    started = time.monotonic()
    r = _probe(emulator, attacker.sandbox_id, "/api/v1/health")
    assert r.status_code == 503 and time.monotonic() - started < 5  # refused at once, no hang on a FIFO


def test_a_process_in_the_sandbox_cannot_impersonate_the_agent(emulator: EmulatorProcess, attacker: Sandbox
                                                               ) -> None:
    attacker.write_file("/tmp/fake.py", FAKE_AGENT.encode())
    attacker.start_process("python3", ["/tmp/fake.py"])
    deadline = time.monotonic() + 10
    while attacker.run("test", ["-e", "/tmp/fake-ready"]).exit_code != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(IDLE_POOL_EXPIRY)
    r = _probe(emulator, attacker.sandbox_id, "/api/v1/health")
    assert "PWNED" not in r.text and r.status_code == 503


def test_agent_sockets_are_out_of_other_local_users_reach(emulator: EmulatorProcess, victim: Sandbox) -> None:
    run_root = emulator.data_dir / "run"
    assert run_root.stat().st_mode & 0o777 == 0o700
    sock = _run_dir(emulator, victim.sandbox_id) / "agent.sock"
    assert sock.stat().st_mode & 0o777 == 0o600
    # Even when the sandbox opens its own folder wide, the parent keeps others out.
    assert victim.run("chmod", ["0777", "/.tle/run", "/.tle/run/agent.sock"]).exit_code == 0
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "try:\n s.connect(sys.argv[1])\nexcept PermissionError:\n sys.exit(3)\n"
             "s.sendall(b'GET /api/v1/health HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); print(s.recv(100))\n")
    r = subprocess.run(["/usr/bin/python3", "-c", probe, str(sock)], user=65534, group=65534,
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 3, (r.stdout, r.stderr)


def test_nothing_written_in_the_shared_folder_outlives_the_sandbox(emulator: EmulatorProcess,
                                                                  tmp_path: Path) -> None:
    keep = tmp_path / "host-file"
    keep.write_text("host data")
    sb = Sandbox.create(cpus=0.5, memory_mb=256, request_timeout=T)
    try:
        r = sb.run("sh", ["-c", "head -c 1048576 /dev/zero > /.tle/run/blob; mkdir -p /.tle/run/d/e; "
                                f"ln -s {keep} /.tle/run/link; ln -s {tmp_path} /.tle/run/d/dirlink; "
                                "mkfifo /.tle/run/fifo"])
        assert r.exit_code == 0
        host_dir = _run_dir(emulator, sb.sandbox_id)
        assert (host_dir / "blob").stat().st_size == 1048576
    finally:
        sb.terminate()
    assert not host_dir.exists()
    assert keep.read_text() == "host data" and tmp_path.is_dir()  # links were removed, not followed


def test_agent_channel_is_still_verified_after_suspend_and_resume(emulator: EmulatorProcess) -> None:
    """The agent's host pid changes with a CRIU restore; the channel follows it, and only it."""
    sb = Sandbox.create(name=f"esc-{os.getpid()}", cpus=0.5, memory_mb=256, request_timeout=T)
    try:
        sb.write_file("/root/x", b"1")
        sb.suspend()
        sb.resume()
        assert sb.read_file("/root/x").value == b"1"
        assert sb.run("true").exit_code == 0
    finally:
        sb.terminate()


def test_host_side_socket_check_refuses_links(tmp_path: Path) -> None:
    """The channel's first check on its own: a link to a real listening socket is refused."""
    import httpcore

    from emulator.agent_channel import ChannelRefused, open_socket_entry

    target = tmp_path / "real.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(target))
    srv.listen(1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(target, run_dir / "agent.sock")
    with pytest.raises(ChannelRefused):
        open_socket_entry(run_dir)
    assert issubclass(ChannelRefused, httpcore.ConnectError)
    os.unlink(run_dir / "agent.sock")
    os.link(target, run_dir / "agent.sock")  # a hard link to a socket inode is a socket: pid check refuses it
    os.close(open_socket_entry(run_dir))
    srv.close()

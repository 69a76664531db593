"""The real tensorlake SDK against the agent, through a TCP-to-unix-socket forwarder.

The agent runs as a real subprocess (agent_helpers.Agent); see conftest.py for the fixtures."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from agent_helpers import wait_for

# ------------------------------------------------------------------------------------------------ real SDK


class _Forwarder:
    """TCP 127.0.0.1:port -> unix socket, so the real SDK can reach the agent."""

    def __init__(self, unix_path: str):
        self.unix_path = unix_path
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX)
            up.connect(self.unix_path)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def test_real_sdk_against_agent(agent, tmpdir_path):
    sandbox_mod = pytest.importorskip("tensorlake.sandbox")
    fwd = _Forwarder(agent.socket)
    try:
        sb = sandbox_mod.Sandbox.connect("sbx-agent-test", proxy_url=f"http://localhost:{fwd.port}")
        res = sb.run("sh", ["-c", "echo hi; echo oops >&2; exit 4"], env={"X": "1"}, timeout=30)
        assert res.exit_code == 4 and res.stdout.strip() == "hi" and res.stderr.strip() == "oops"
        res = sb.run("sleep", ["10"], timeout=0.5)
        assert res.exit_code == -9 and res.timed_out
        res = sb.run("no-such-cmd-xyz")
        assert res.exit_code == 127
        p = os.path.join(tmpdir_path, "sdk file.txt")
        sb.write_file(p, b"sdk bytes")
        assert bytes(sb.read_file(p).value) == b"sdk bytes"
        names = [e.name for e in sb.list_directory(tmpdir_path).entries]
        assert "sdk file.txt" in names
        sb.delete_file(p)
        proc = sb.start_process("cat", stdin_mode=sandbox_mod.StdinMode.PIPE)
        sb.write_stdin(proc.pid, b"line one\n")
        sb.close_stdin(proc.pid)
        wait_for(lambda: sb.get_process(proc.pid).status != "running")
        assert sb.get_stdout(proc.pid).lines == ["line one"]
        assert [e.line for e in sb.follow_output(proc.pid)] == ["line one"]
        assert proc.pid in [x.pid for x in sb.list_processes()]
        web = sb.start_process("sleep", ["100"], name="sdk web", restart={"policy": "always"})
        assert web.managed is not None and web.managed.id == "sdk web"
        again = sb.restart_process("sdk web")
        assert again.pid != web.pid
        assert sb.send_signal("sdk web", 0).success is True
        sb.kill_process("sdk web")
        assert sb.health().healthy is True
        assert sb.daemon_info().total_processes >= 1
        with pytest.raises(Exception) as ei:
            sb.get_process(99999999)
        assert "404" in str(ei.value) or getattr(ei.value, "status_code", None) == 404
    finally:
        fwd.close()

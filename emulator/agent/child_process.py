"""One OS process of a process-table entry (one incarnation of it): its output pipes feeding the entry's
buffer, its exit status as reported by the reaper, its stdin pipe, and signals to its process group."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import traceback
from typing import TYPE_CHECKING

from agent_log import log, now_ms
from output_buffer import STDERR, STDOUT, OutputLine
from supervised import FdWriter, Supervised

if TYPE_CHECKING:
    from process_table import Proc, ProcessTable

PIPE_READ = 256 * 1024


def read_oom_kills() -> int | None:
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as f:
                for line in f:
                    k, _, v = line.strip().partition(" ")
                    if k == "oom_kill":
                        return int(v)
        except (OSError, ValueError):
            continue
    return None


class Child(Supervised):
    """One OS process (one incarnation of a table entry); reaping and signals are the shared core's
    (supervised)."""

    def __init__(self, table: ProcessTable, proc: Proc, popen, out_fds: dict, stdin_fd: int | None, timeout):
        super().__init__(table)
        self.proc = proc
        self.popen = popen
        self.pid = popen.pid
        self.started_at = now_ms()
        self.start_mono = time.monotonic()
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.oom_killed = False
        self.timed_out = False
        self.finished = False
        self.done = self.loop.create_future()
        self.partial = {STDOUT: bytearray(), STDERR: bytearray()}
        self.open_fds: dict = {}
        self.timeout_handle: asyncio.TimerHandle | None = None
        for fd, s in out_fds.items():
            os.set_blocking(fd, False)
            self.open_fds[fd] = s
            self.loop.add_reader(fd, self._on_readable, fd, s)
        self.stdin = FdWriter(self.loop, stdin_fd, "stdin")
        self.stdin_pipe = stdin_fd is not None
        self.stdin_lock = asyncio.Lock()
        if timeout:
            self.timeout_handle = self.loop.call_later(timeout, self._on_timeout)

    # -- state --
    @property
    def status(self) -> str:
        if not self.reaped:
            return "running"
        if self.oom_killed:
            return "oom_killed"
        if self.signal is not None:
            return "signaled"
        return "exited"

    @property
    def stdin_fd(self) -> int | None:
        return self.stdin.fd

    @property
    def stdin_writable(self) -> bool:
        return self.stdin.fd is not None

    def exit_event(self) -> dict:
        if self.timed_out:
            reason = "timed_out"
        elif self.oom_killed:
            reason = "oom_killed"
        elif self.signal is not None:
            reason = "signaled"
        else:
            reason = "exited"
        return {
            "exit_code": self.exit_code,
            "signal": self.signal,
            "oom_killed": self.oom_killed,
            "reason": reason,
        }

    # -- output --
    def _on_readable(self, fd: int, s: int) -> None:
        try:
            data = os.read(fd, PIPE_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._feed(s, data)
        else:
            self._eof(fd, s)

    def _feed(self, s: int, data: bytes) -> None:
        partial = self.partial[s]
        limit = self.proc.buffer.limit
        if b"\n" not in data:
            partial += data
            if len(partial) >= limit:
                self._emit(s, [bytes(partial)])
                partial.clear()
            return
        if partial:
            data = bytes(partial) + data
            partial.clear()
        parts = data.split(b"\n")
        rest = parts.pop()
        if rest:
            partial += rest
        if len(partial) >= limit:
            parts.append(bytes(partial))
            partial.clear()
        self._emit(s, parts)

    def _emit(self, s: int, raw_lines: list) -> None:
        ts = now_ms()
        self.proc.buffer.extend([OutputLine.of(s, b, ts) for b in raw_lines])

    def _flush_partial(self, s: int) -> None:
        partial = self.partial[s]
        if partial:
            self._emit(s, [bytes(partial)])
            partial.clear()

    def _eof(self, fd: int, s: int) -> None:
        try:
            self.loop.remove_reader(fd)
        except Exception:
            pass
        try:
            os.close(fd)
        except OSError:
            pass
        self.open_fds.pop(fd, None)
        self._flush_partial(s)
        if self.reaped and not self.open_fds:
            self._finish()

    def _drain_now(self) -> None:
        """Synchronously read whatever the pipes hold (used once the process is gone)."""
        for fd, s in list(self.open_fds.items()):
            budget = 8 * 1024 * 1024
            while budget > 0 and fd in self.open_fds:
                try:
                    data = os.read(fd, PIPE_READ)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    data = b""
                if not data:
                    self._eof(fd, s)
                    break
                budget -= len(data)
                self._feed(s, data)
            if fd in self.open_fds:
                self._flush_partial(s)

    # -- lifecycle --
    def on_reaped(self, status: int) -> None:
        if self.reaped:
            return
        self.exit_code, self.signal = self._mark_reaped(status)
        self.popen.returncode = self.exit_code if self.signal is None else -self.signal
        oom_now = read_oom_kills()
        if self.signal == signal.SIGKILL and not self.kill_sent and not self.timed_out:
            before = self.table.oom_seen
            if oom_now is not None and before is not None and oom_now > before:
                self.oom_killed = True
        if oom_now is not None:
            self.table.oom_seen = oom_now
        if self.timeout_handle is not None:
            self.timeout_handle.cancel()
            self.timeout_handle = None
        # a pending escalation (terminate) stays: it also ends what is left of the tree after the exit
        self.close_stdin()
        self._await_output(not self.open_fds)

    def _grace_expired(self) -> None:
        self.grace_handle = None
        if self.finished:
            return
        self._drain_now()
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._cancel_grace()
        if not self.done.done():
            self.done.set_result(None)
        try:
            self.proc.on_child_finished(self)
        except Exception:
            log(f"error finishing process {self.pid}:\n{traceback.format_exc()}")

    def _on_timeout(self) -> None:
        self.timeout_handle = None
        if not self.reaped:
            self.timed_out = True
            self.kill_tree(signal.SIGKILL)

    def close_stdin(self) -> None:
        fd = self.stdin.detach()
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    async def write_stdin(self, data: bytes) -> None:
        """Write all of `data` to stdin. Raises BrokenPipeError once stdin is closed, OSError from the pipe."""
        await self.stdin.write(data)

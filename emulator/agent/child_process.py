"""One OS process of a process-table entry (one incarnation of it): its output pipes feeding the entry's
buffer, its exit status as reported by the reaper, its stdin pipe, and signals to its process group."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
import traceback
from typing import TYPE_CHECKING

from agent_log import log, now_ms
from output_buffer import STDERR, STDOUT, OutputLine

if TYPE_CHECKING:
    from process_table import Proc, ProcessTable
    from process_tree import Tree

PIPE_READ = 256 * 1024
EXIT_DRAIN_GRACE = 0.25  # how long output is still awaited after the exit (a background job may hold the pipes)


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


class Child:
    """One OS process (one incarnation of a table entry)."""

    def __init__(self, table: ProcessTable, proc: Proc, popen, out_fds: dict, stdin_fd: int | None, timeout):
        self.table = table
        self.proc = proc
        self.loop = table.loop
        self.popen = popen
        self.pid = popen.pid
        self.started_at = now_ms()
        self.start_mono = time.monotonic()
        self.ended_at: int | None = None
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.oom_killed = False
        self.timed_out = False
        self.kill_sent = False
        self.reaped = False
        self.finished = False
        self.done = self.loop.create_future()
        self.partial = {STDOUT: bytearray(), STDERR: bytearray()}
        self.open_fds: dict = {}
        self.grace_handle: asyncio.TimerHandle | None = None
        self.escalate_handle: asyncio.TimerHandle | None = None
        self.timeout_handle: asyncio.TimerHandle | None = None
        self.tree: Tree | None = None  # everything this process spawns (process_tree), set once started
        for fd, s in out_fds.items():
            os.set_blocking(fd, False)
            self.open_fds[fd] = s
            self.loop.add_reader(fd, self._on_readable, fd, s)
        self.stdin_fd = stdin_fd
        self.stdin_pipe = stdin_fd is not None
        self.stdin_wait: asyncio.Future | None = None
        self.stdin_lock = asyncio.Lock()
        if stdin_fd is not None:
            os.set_blocking(stdin_fd, False)
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
    def stdin_writable(self) -> bool:
        return self.stdin_fd is not None

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
        self.reaped = True
        self.ended_at = now_ms()
        if os.WIFSIGNALED(status):
            self.signal = os.WTERMSIG(status)
            self.exit_code = None
        elif os.WIFEXITED(status):
            self.exit_code = os.WEXITSTATUS(status)
        else:  # cannot happen without WUNTRACED
            self.exit_code = -1
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
        if not self.open_fds:
            self._finish()
        else:
            self.grace_handle = self.loop.call_later(EXIT_DRAIN_GRACE, self._grace_expired)

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
        if self.grace_handle is not None:
            self.grace_handle.cancel()
            self.grace_handle = None
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

    def signal_group(self, sig: int) -> bool:
        if sig == signal.SIGKILL:
            self.kill_sent = True
        if self.reaped and self.pid in self.table.children:
            return False  # pid reused by another of our children: do not touch its group
        try:
            os.killpg(self.pid, sig)
            return True
        except ProcessLookupError:
            pass
        except OSError:
            return False
        if not self.reaped:
            try:
                os.kill(self.pid, sig)
                return True
            except OSError:
                return False
        return False

    def kill_tree(self, sig: int = signal.SIGKILL) -> bool:
        """Send `sig` to the whole tree of this process, however its members detached (process_tree), also
        after the process itself exited. -> whether anything was signalled."""
        if sig == signal.SIGKILL:
            self.kill_sent = True
        if self.tree is None:
            return self.signal_group(sig)
        return self.table.trees.signal_tree(self.tree, sig) > 0

    def tree_alive(self) -> bool:
        if self.tree is None:
            return not self.reaped
        return self.table.trees.alive(self.tree)

    def terminate(self, grace: float) -> None:
        """SIGTERM the tree, SIGKILL what is left of it after `grace` seconds (the exit of the process itself
        does not cancel that: its descendants are ended with it)."""
        if not self.tree_alive():
            return
        self.kill_tree(signal.SIGTERM)
        if self.escalate_handle is None:
            self.escalate_handle = self.loop.call_later(grace, self._escalate)

    def _escalate(self) -> None:
        self.escalate_handle = None
        if self.tree_alive():
            self.kill_tree(signal.SIGKILL)

    def close_stdin(self) -> None:
        fd = self.stdin_fd
        if fd is None:
            return
        self.stdin_fd = None
        if self.stdin_wait is not None:
            try:
                self.loop.remove_writer(fd)
            except Exception:
                pass
            if not self.stdin_wait.done():
                self.stdin_wait.set_exception(BrokenPipeError(errno.EPIPE, "stdin closed"))
            self.stdin_wait = None
        try:
            os.close(fd)
        except OSError:
            pass

    async def write_stdin(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            fd = self.stdin_fd
            if fd is None:
                raise BrokenPipeError(errno.EPIPE, "stdin closed")
            try:
                n = os.write(fd, view)
                view = view[n:]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            fut = self.loop.create_future()
            self.stdin_wait = fut

            def _ready(f=fut):
                if not f.done():
                    f.set_result(None)

            self.loop.add_writer(fd, _ready)
            try:
                await fut
            finally:
                if self.stdin_fd == fd:
                    try:
                        self.loop.remove_writer(fd)
                    except Exception:
                        pass
                if self.stdin_wait is fut:
                    self.stdin_wait = None

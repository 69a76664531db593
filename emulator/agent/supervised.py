"""The supervision core that processes (child_process.Child) and PTY sessions (pty_session.PtySession) share:
the exit status the single reaper reports, signals to the process group or to the whole tree (process_tree),
the short wait for output still in flight after the exit, and writes into a non-blocking descriptor."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from typing import TYPE_CHECKING

from agent_log import now_ms

if TYPE_CHECKING:
    from process_table import ProcessTable
    from process_tree import Tree

EXIT_DRAIN_GRACE = 0.25  # how long output is still awaited after the exit (a background job may hold the pipes)


def decode_status(status: int) -> tuple[int | None, int | None]:
    """A wait status -> (exit code, or None if a signal ended the process; that signal, or None)."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return -1, None  # cannot happen without WUNTRACED


class Supervised:
    """One OS process the agent started and reaps: registered in the table's children under its pid once
    started, so the reaper calls on_reaped. Subclasses set `pid`, `popen` and `tree` when they start it and
    define on_reaped and _finish (called once the exit is known and its output collected)."""

    def __init__(self, table: ProcessTable):
        self.table = table
        self.loop = table.loop
        self.pid = 0
        self.tree: Tree | None = None  # everything this process spawns (process_tree), set once started
        self.reaped = False
        self.ended_at: int | None = None
        self.kill_sent = False  # a SIGKILL was sent by the agent (so a SIGKILL exit is not an OOM kill)
        self.grace_handle: asyncio.TimerHandle | None = None
        self.escalate_handle: asyncio.TimerHandle | None = None

    # -- exit --
    def _mark_reaped(self, status: int) -> tuple[int | None, int | None]:
        """Record the exit; -> decode_status(status)."""
        self.reaped = True
        self.ended_at = now_ms()
        return decode_status(status)

    def _await_output(self, collected: bool) -> None:
        """After the exit: finish now if the output is all collected, else after EXIT_DRAIN_GRACE at most."""
        if collected:
            self._finish()
        else:
            self.grace_handle = self.loop.call_later(EXIT_DRAIN_GRACE, self._grace_expired)

    def _grace_expired(self) -> None:
        self.grace_handle = None
        self._finish()

    def _cancel_grace(self) -> None:
        if self.grace_handle is not None:
            self.grace_handle.cancel()
            self.grace_handle = None

    def _finish(self) -> None:
        raise NotImplementedError

    # -- signals --
    def signal_group(self, sig: int) -> bool:
        """Send `sig` to the process group (to the process alone if the group is gone while it is not yet
        reaped). -> whether it was sent."""
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


class FdWriter:
    """Writes into a non-blocking descriptor (a stdin pipe, a terminal), waiting while it is full.

    `fd` is None once closed; close() fails a write that is waiting with EPIPE."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int | None, what: str):
        self.loop = loop
        self.fd = fd
        self.what = what  # for the EPIPE message: "stdin", "terminal"
        self.wait: asyncio.Future | None = None
        if fd is not None:
            os.set_blocking(fd, False)

    async def write(self, data: bytes) -> None:
        """Write all of `data`. Raises BrokenPipeError once closed, OSError as os.write raises it."""
        view = memoryview(data)
        while view:
            fd = self.fd
            if fd is None:
                raise BrokenPipeError(errno.EPIPE, f"{self.what} closed")
            try:
                view = view[os.write(fd, view) :]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            fut = self.loop.create_future()
            self.wait = fut

            def _ready(f=fut):
                if not f.done():
                    f.set_result(None)

            self.loop.add_writer(fd, _ready)
            try:
                await fut
            finally:
                if self.fd == fd:
                    try:
                        self.loop.remove_writer(fd)
                    except Exception:
                        pass
                if self.wait is fut:
                    self.wait = None

    def detach(self) -> int | None:
        """Stop writing: a waiting write fails with EPIPE. -> the descriptor, which the caller closes."""
        fd, self.fd = self.fd, None
        if fd is not None and self.wait is not None:
            try:
                self.loop.remove_writer(fd)
            except Exception:
                pass
            if not self.wait.done():
                self.wait.set_exception(BrokenPipeError(errno.EPIPE, f"{self.what} closed"))
            self.wait = None
        return fd

"""PTY sessions: a process on a pseudo-terminal as its controlling tty, and the one client attached to it
over the frame protocol (``0x00`` data, ``0x01`` resize, ``0x02`` READY, ``0x03`` exit)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import signal
import struct
import subprocess
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent_log import now_ms
from errors import spawn_failure
from frame_protocol import FRAME_BINARY, FrameStream
from process_tree import MARKER
from spawning import launch_settings
from supervised import FdWriter, Supervised

if TYPE_CHECKING:
    from process_spec import Spec
    from process_table import ProcessTable

PTY_OP_DATA = 0x00
PTY_OP_RESIZE = 0x01
PTY_OP_READY = 0x02
PTY_OP_EXIT = 0x03
PTY_MESSAGE_MAX = 64 * 1024  # terminal bytes per DATA message
PTY_BUFFER_LIMIT = 1024 * 1024  # output held while no client is READY; past it the terminal is not read
PTY_WRITE_HIGH = 256 * 1024  # unsent bytes towards the client past which the terminal is not read
PTY_FINAL_DRAIN = 256 * 1024  # at most this much is still read from the terminal once its program is gone


def _acquire_ctty() -> None:  # runs in the child between fork and exec
    try:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    except OSError:
        pass


def _winsize(rows: int, cols: int) -> bytes:
    return struct.pack("HHHH", rows, cols, 0, 0)


class PtySession(Supervised):
    """A process on a pseudo-terminal, and the one client attached to it (a newer attach replaces an older).

    Registered in the process table's children like a Child, so the single reaper reports its exit (on_reaped);
    reaping and signals are the shared core's (supervised).
    """

    def __init__(self, table: ProcessTable, spec: Spec, rows: int, cols: int, on_finished: Callable[[], None]):
        super().__init__(table)
        self.on_finished = on_finished  # called once the session has exited and its output is collected
        self.id = secrets.token_hex(8)
        self.token = secrets.token_hex(16)
        self.spec = spec
        self.rows = rows
        self.cols = cols
        self.created_at = now_ms()
        self.master = -1
        self.popen: subprocess.Popen | None = None
        self.pending = bytearray()  # output no client has been sent yet
        self.client: FrameStream | None = None
        self.ready = False  # the attached client sent READY
        self.reading = False
        self.eof = False
        self.finished = False  # exited and every byte of output collected
        self.deleted = False
        self.exit_code: int | None = None
        self.drain_task: asyncio.Task | None = None
        self.input = FdWriter(self.loop, None, "terminal")  # keystrokes into the terminal (the master side)
        self.input_lock = asyncio.Lock()

    # -- start --
    def start(self) -> None:
        spec = self.spec
        # TERM: the client is a terminal emulator, whatever the image says
        env, cwd, user_kwargs = launch_settings(
            spec, self.table.base_env, self.table.default_user, {"TERM": "xterm-256color"}
        )
        token = self.table.trees.new_token()
        env[MARKER] = token  # its own process tree (process_tree), ended whole by DELETE
        master, slave = os.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, _winsize(self.rows, self.cols))
            if "user" in user_kwargs:
                try:
                    os.fchown(slave, user_kwargs["user"], -1)  # the terminal belongs to its user, as after a login
                except OSError:
                    pass
            try:
                popen = subprocess.Popen(
                    [spec.command] + spec.args,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,  # setsid(); then the terminal becomes its controlling tty
                    preexec_fn=_acquire_ctty,
                    close_fds=True,
                    restore_signals=True,
                    **user_kwargs,
                )
            except (OSError, ValueError, TypeError, subprocess.SubprocessError) as e:
                raise spawn_failure(e, spec.command, cwd) from None
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        self.input = FdWriter(self.loop, master, "terminal")
        self.popen = popen
        self.pid = popen.pid
        self.tree = self.table.trees.register(token, self.pid)
        self.table.children[self.pid] = self
        self._flow()

    def info(self) -> dict:
        return {
            "session_id": self.id,
            "pid": self.pid,
            "command": self.spec.command,
            "args": list(self.spec.args),
            "rows": self.rows,
            "cols": self.cols,
            "status": "exited" if self.finished else "running",
            "exit_code": self.exit_code,
            "connected": self.client is not None,
            "created_at": self.created_at,
            "ended_at": self.ended_at,
        }

    # -- output --
    def _flow(self) -> None:
        """Read the terminal only while its output has somewhere to go."""
        if self.finished or self.master < 0 or self.eof:
            return
        client = self.client if self.ready else None
        if client is None:
            ok = len(self.pending) < PTY_BUFFER_LIMIT
        else:
            ok = client.buffered() <= PTY_WRITE_HIGH
            if not ok and self.drain_task is None:
                self.drain_task = self.loop.create_task(self._drained(client))
        if ok and not self.reading:
            self.loop.add_reader(self.master, self._on_readable)
            self.reading = True
        elif not ok:
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            try:
                self.loop.remove_reader(self.master)
            except Exception:
                pass

    async def _drained(self, client: FrameStream) -> None:
        try:
            await client.drain()
        except Exception:
            pass
        finally:
            self.drain_task = None
            self._flow()

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, PTY_MESSAGE_MAX)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: no process has the terminal open any more
            data = b""
        if not data:
            self._stop_reading()
            self.eof = True
            if self.reaped:
                self._finish()
            return
        self._deliver(data)
        self._flow()

    def _deliver(self, data: bytes) -> None:
        if self.client is not None and self.ready:
            self.client.write(FRAME_BINARY, bytes([PTY_OP_DATA]) + data)
        else:
            self.pending += data

    def _send_pending(self, client: FrameStream) -> None:
        data = bytes(self.pending)
        self.pending.clear()
        for i in range(0, len(data), PTY_MESSAGE_MAX):
            client.write(FRAME_BINARY, bytes([PTY_OP_DATA]) + data[i : i + PTY_MESSAGE_MAX])

    def _send_exit(self, client: FrameStream) -> None:
        code = self.exit_code if self.exit_code is not None else -1
        client.write(FRAME_BINARY, struct.pack(">Bi", PTY_OP_EXIT, code))
        client.close(1000, f"exit:{code}")
        if self.client is client:
            self.client = None
            self.ready = False

    # -- clients --
    def attach(self, client: FrameStream) -> None:
        old = self.client
        if old is not None:
            old.close(1008, "another client attached to this PTY session")
        self.client = client
        self.ready = False  # output is held until this client sends READY
        self._flow()

    def detach(self, client: FrameStream) -> None:
        if self.client is client:
            self.client = None
            self.ready = False
            self._flow()

    def on_ready(self, client: FrameStream) -> None:
        if self.client is not client or self.ready:
            return
        self.ready = True
        self._send_pending(client)
        if self.finished:
            self._send_exit(client)
        else:
            self._flow()

    async def write_input(self, data: bytes) -> None:
        """Keystrokes into the terminal; dropped once it is gone. Waits while the terminal does not take them."""
        async with self.input_lock:
            try:
                await self.input.write(data)
            except OSError:
                return

    def resize(self, cols: int, rows: int) -> None:
        if self.master < 0 or not (0 < cols <= 65535 and 0 < rows <= 65535):
            return
        self.rows, self.cols = rows, cols
        try:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, _winsize(rows, cols))  # the kernel sends SIGWINCH
        except OSError:
            pass

    # -- end --
    def on_reaped(self, status: int) -> None:
        if self.reaped:
            return
        code, sig = self._mark_reaped(status)
        self.exit_code = 128 + sig if sig is not None else code  # a shell's way to report a signal
        if self.popen is not None:  # always: the reaper knows the session only once it started
            self.popen.returncode = self.exit_code  # so subprocess never waits for this pid itself
        # a background job may hold the terminal open: wait a moment for the last output, no longer
        self._await_output(self.eof or self.deleted)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._cancel_grace()
        self._stop_reading()
        budget = PTY_FINAL_DRAIN
        while not self.deleted and self.master >= 0 and budget > 0:
            try:
                data = os.read(self.master, PTY_MESSAGE_MAX)
            except OSError:
                break
            if not data:
                break
            budget -= len(data)
            self._deliver(data)
        self._close_master()
        if self.client is not None and self.ready:
            self._send_exit(self.client)
        self.on_finished()

    def _close_master(self) -> None:
        fd = self.master
        if fd < 0:
            return
        self._stop_reading()
        self.input.detach()  # a write waiting for room fails with EPIPE; the descriptor is closed here
        self.master = -1
        try:
            os.close(fd)  # hangs up the terminal: what still runs on it gets SIGHUP
        except OSError:
            pass

    def delete(self) -> None:
        """DELETE: the attached client is told, the process tree is killed, the terminal hung up."""
        self.deleted = True
        if self.client is not None:
            self.client.close(1001, "session terminated")
            self.client = None
            self.ready = False
        if self.tree is not None or not self.reaped:
            self.kill_tree(signal.SIGKILL)  # however its members detached
        self._close_master()
        self.pending.clear()
        if self.reaped:
            self._finish()

"""The agent as a whole: it owns the process table and the APIs, listens on the unix socket, starts the
image's entrypoint, and shuts everything down on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import time
import traceback

from agent_log import log
from errors import SpawnError
from file_api import FileApi
from http_connection import MAX_HEAD, Connection
from process_api import ProcessApi
from process_spec import Spec
from process_table import ProcessTable
from process_tree import become_subreaper
from pty_api import PtyApi
from routing import Router

VERSION = "0.1.0-tle-emulator"
SHUTDOWN_GRACE = 3.0
GATE_TIMEOUT = 120.0  # seconds the entrypoint waits for the emulator's egress rules


class Agent:
    def __init__(self, loop: asyncio.AbstractEventLoop, socket_path: str, output_limit: int, max_finished: int):
        self.loop = loop
        self.socket_path = socket_path
        self.output_limit = output_limit
        self.table = ProcessTable(loop, output_limit, max_finished)
        self.start_wall = time.time()
        self.server: asyncio.AbstractServer | None = None
        self.shutting_down = False
        self.stop_event: asyncio.Event | None = None
        self.connections: set[asyncio.Task] = set()
        self.files = FileApi(self.table.default_owner)
        self.ptys = PtyApi(self.table)
        self.router = Router(ProcessApi(self.table), self.files, self.ptys, self.daemon_info)

    def daemon_info(self) -> dict:
        entries = self.table.entries
        running = sum(1 for p in entries.values() if p.child is not None and not p.child.reaped)
        return {
            "version": VERSION,
            # wall clock, not monotonic: after a CRIU restore on another boot the monotonic clock restarts
            "uptime_secs": max(0, int(time.time() - self.start_wall)),
            "running_processes": running,
            "total_processes": len(entries),
        }

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(self.router.dispatch, reader, writer)
        task = asyncio.current_task()  # never None: the server runs each connection as a task
        if task is not None:
            self.connections.add(task)
        try:
            await conn.serve()
        finally:
            if task is not None:
                self.connections.discard(task)

    async def _entrypoint_after_gate(self) -> None:
        # TLE_ENTRYPOINT_GATE names a file the emulator creates once the sandbox's egress rules are
        # in force: the image's own code must not run with the network open before that.
        gate = os.environ.get("TLE_ENTRYPOINT_GATE")
        if gate and os.environ.get("TLE_ENTRYPOINT"):
            deadline = time.monotonic() + GATE_TIMEOUT
            while not os.path.exists(gate):  # noqa: ASYNC240 (one stat of a local bind mount)
                if time.monotonic() > deadline:
                    log(f"entrypoint not started: {gate} did not appear within {GATE_TIMEOUT:.0f}s")
                    return
                await asyncio.sleep(0.02)
        self._start_entrypoint()

    def _start_entrypoint(self) -> None:
        raw = os.environ.get("TLE_ENTRYPOINT")
        if not raw:
            return
        try:
            argv = json.loads(raw)
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
                raise ValueError("must be a non-empty JSON list of strings")
        except ValueError as e:
            log(f"ignoring TLE_ENTRYPOINT {raw!r}: {e}")
            return
        spec = Spec()
        spec.command = argv[0]
        spec.args = argv[1:]
        try:
            proc = self.table.start_entry(spec, None)
            log(f"entrypoint started as pid {proc.pid}: {argv}")
        except SpawnError as e:
            log(f"entrypoint {argv} could not be started: {e.message}")

    async def run(self) -> None:
        self.loop.set_exception_handler(self._loop_exception)
        self.stop_event = asyncio.Event()
        self.loop.add_signal_handler(signal.SIGCHLD, self.table.reap)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop_event.set)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: None)
        become_subreaper()
        self.table.reap()
        sock_dir = os.path.dirname(self.socket_path)
        if sock_dir:
            os.makedirs(sock_dir, exist_ok=True)
        try:
            st = os.lstat(self.socket_path)
            if stat.S_ISDIR(st.st_mode):
                raise SystemExit(f"tle-agent: socket path {self.socket_path} is a directory")
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        self.server = await asyncio.start_unix_server(
            self._client, path=self.socket_path, limit=MAX_HEAD, backlog=1024
        )
        os.chmod(self.socket_path, 0o600)
        log(f"listening on {self.socket_path} (pid {os.getpid()}, output limit {self.output_limit} bytes)")
        gate_task = asyncio.ensure_future(self._entrypoint_after_gate())
        await self.stop_event.wait()
        gate_task.cancel()
        await self.shutdown()

    def _loop_exception(self, loop, context) -> None:
        msg = context.get("message", "")
        exc = context.get("exception")
        if exc is not None:
            msg += ": " + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log(f"event loop error: {msg}")

    async def shutdown(self) -> None:
        self.shutting_down = True
        log("shutting down")
        if self.server is not None:
            self.server.close()
        await self.table.terminate_all(SHUTDOWN_GRACE)
        for task in list(self.connections):
            task.cancel()
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass

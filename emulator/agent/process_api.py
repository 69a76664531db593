"""The ``/api/v1/processes`` handlers: start, run (streamed), list and inspect, output and follow, kill,
restart, signal, stdin."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from agent_log import now_ms
from errors import HttpError, SpawnError, bad_request
from http_request import read_json
from output_buffer import STDERR, STDOUT
from process_spec import is_int, parse_managed, parse_spec
from sse_output import sse_event, stream_lines

if TYPE_CHECKING:
    from http_connection import Connection
    from http_request import Request
    from process_table import Proc, ProcessTable


class ProcessApi:
    def __init__(self, table: ProcessTable):
        self.table = table

    def lookup(self, ref: str) -> Proc:
        """The entry for a pid or a managed name (404 otherwise)."""
        return self.table.lookup(ref)

    async def h_list(self, conn: Connection) -> None:
        await conn.json(200, {"processes": [p.info() for p in self.table.entries.values()]})

    async def h_output(self, conn: Connection, proc: Proc, streams: tuple) -> None:
        lines = proc.buffer.snapshot(streams)
        await conn.json(200, {"pid": proc.pid, "lines": lines, "line_count": len(lines)})

    async def h_start(self, conn: Connection, req: Request) -> None:
        body = await read_json(req)
        spec = parse_spec(body)
        mcfg = parse_managed(body)
        if mcfg is not None and mcfg["name"] is not None:
            existing = self.table.by_name.get(mcfg["name"])
            if existing is not None:
                # by_name holds managed entries only; a stopped one whose process is gone gives up its name
                if existing.managed is None or existing.managed.active or not existing.current.finished:
                    raise HttpError(
                        409,
                        "NAME_CONFLICT",
                        "a managed process named {!r} already exists".format(mcfg["name"]),
                    )
                self.table.forget(existing)
        try:
            proc = self.table.start_entry(spec, mcfg)
        except SpawnError as e:
            raise HttpError(400, "SPAWN_FAILED", f"failed to start {spec.command}: {e.message}") from None
        await conn.json(201, proc.info())

    async def h_run(self, conn: Connection, req: Request) -> None:
        body = await read_json(req)
        spec = parse_spec(body)
        try:
            proc = self.table.start_entry(spec, None)
        except SpawnError as e:
            await conn.start_sse()
            out = sse_event("output", {"line": e.message, "timestamp": now_ms(), "stream": "stderr"})
            ex = sse_event(
                "exited", {"exit_code": e.exit_code, "signal": None, "oom_killed": False, "reason": "exited"}
            )
            await conn.chunk(out + ex)
            await conn.end_chunked()
            return
        child = proc.current
        await conn.start_sse()
        await conn.chunk(sse_event("started", {"pid": child.pid, "started_at": child.started_at}))
        await stream_lines(conn, proc, (STDOUT, STDERR))
        await conn.chunk(sse_event("exited", child.exit_event()))
        await conn.end_chunked()

    async def h_follow(self, conn: Connection, proc: Proc, streams: tuple) -> None:
        await conn.start_sse()
        await stream_lines(conn, proc, streams)
        await conn.chunk(b"event: eof\ndata: {}\n\n")
        await conn.end_chunked()

    async def h_kill(self, conn: Connection, proc: Proc) -> None:
        if proc.managed is not None:
            proc.managed.stop()
        else:
            # the whole tree, however it detached, also what is left of it after the process exited
            proc.current.kill_tree(signal.SIGKILL)
        await conn.send(204)

    async def h_restart(self, conn: Connection, proc: Proc) -> None:
        if proc.managed is not None:
            await proc.managed.restart_now()
            return await conn.json(200, proc.info())
        old = proc.current
        old.kill_tree(signal.SIGKILL)
        try:
            new = self.table.start_entry(proc.spec, None)
        except SpawnError as e:
            raise HttpError(
                400, "SPAWN_FAILED", f"failed to restart {proc.spec.command}: {e.message}"
            ) from None
        await conn.json(200, new.info())

    async def h_signal(self, conn: Connection, req: Request, proc: Proc) -> None:
        body = await read_json(req)
        sig = body.get("signal")
        if not is_int(sig) or (sig != 0 and sig not in {int(x) for x in signal.valid_signals()}):
            raise bad_request("`signal` must be a valid signal number, e.g. 15")
        child = proc.current
        if sig == signal.SIGKILL:
            child.kill_sent = True
        ok = child.signal_group(sig)
        await conn.json(200, {"success": bool(ok)})

    async def h_stdin(self, conn: Connection, req: Request, proc: Proc) -> None:
        child = proc.current
        if child.stdin_fd is None:
            why = "was not started with stdin_mode=pipe" if not child.stdin_pipe else "has its stdin closed"
            raise HttpError(
                400, "STDIN_NOT_WRITABLE", f"stdin of process {child.pid} is not writable: it {why}"
            )
        async with child.stdin_lock:
            while True:
                data = await req.body.read_chunk()
                if not data:
                    break
                try:
                    await child.write_stdin(data)
                except OSError:
                    raise HttpError(
                        400,
                        "STDIN_NOT_WRITABLE",
                        f"stdin of process {child.pid} is not writable: the pipe is closed",
                    ) from None
        await conn.send(204)

    async def h_stdin_close(self, conn: Connection, proc: Proc) -> None:
        child = proc.current
        if not child.stdin_pipe:
            raise HttpError(
                400,
                "STDIN_NOT_WRITABLE",
                f"stdin of process {child.pid} was not started with stdin_mode=pipe",
            )
        child.close_stdin()
        await conn.send(204)

"""The ``/api/v1/pty`` handlers and the registry of PTY sessions (live ones, and the latest exited ones)."""

from __future__ import annotations

import secrets
import struct
from typing import TYPE_CHECKING

from errors import HttpError, SpawnError, bad_request
from frame_protocol import FRAME_BINARY, FRAME_CLOSE
from frame_upgrade import require_frames, switch_to_frames
from http_request import read_json
from process_spec import is_int, parse_spec
from pty_session import PTY_OP_DATA, PTY_OP_READY, PTY_OP_RESIZE, PtySession

if TYPE_CHECKING:
    from http_connection import Connection
    from http_request import Request
    from process_table import ProcessTable

MAX_PTY_SESSIONS = 256  # live sessions
MAX_EXITED_PTY = 64  # exited sessions kept (for a late attach, GET, DELETE); the oldest are forgotten


class PtyApi:
    def __init__(self, table: ProcessTable):
        self.table = table
        self.pty_sessions: dict[str, PtySession] = {}  # session id -> PtySession, in creation order

    async def h_list(self, conn: Connection) -> None:
        await conn.json(200, {"sessions": [s.info() for s in self.pty_sessions.values()]})

    def pty_session(self, sid: str) -> PtySession:
        session = self.pty_sessions.get(sid)
        if session is None:
            raise HttpError(404, "NOT_FOUND", f"PTY session {sid} not found")
        return session

    def on_pty_finished(self) -> None:
        exited = [s for s in self.pty_sessions.values() if s.finished]
        for s in exited[: max(0, len(exited) - MAX_EXITED_PTY)]:
            del self.pty_sessions[s.id]

    async def h_pty_create(self, conn: Connection, req: Request) -> None:
        body = await read_json(req)
        spec = parse_spec(body)
        size = {}
        for k, default in (("rows", 24), ("cols", 80)):
            v = body.get(k)
            if v is None:
                v = default
            if not is_int(v) or not 0 < v <= 65535:
                raise bad_request(f"`{k}` must be an integer in 1..65535")
            size[k] = v
        if sum(1 for s in self.pty_sessions.values() if not s.finished) >= MAX_PTY_SESSIONS:
            raise HttpError(429, "TOO_MANY_SESSIONS", f"at most {MAX_PTY_SESSIONS} PTY sessions may run at once")
        session = PtySession(self.table, spec, size["rows"], size["cols"], self.on_pty_finished)
        try:
            session.start()
        except SpawnError as e:
            raise HttpError(400, "SPAWN_FAILED", f"failed to start {spec.command}: {e.message}") from None
        self.pty_sessions[session.id] = session
        await conn.json(201, {"session_id": session.id, "token": session.token})

    async def h_pty_delete(self, conn: Connection, session: PtySession) -> None:
        self.pty_sessions.pop(session.id, None)
        session.delete()
        await conn.send(204)

    async def h_pty_resize(self, conn: Connection, req: Request, session: PtySession) -> None:
        body = await read_json(req)
        rows, cols = body.get("rows"), body.get("cols")
        if not (is_int(rows) and is_int(cols) and 0 < rows <= 65535 and 0 < cols <= 65535):
            raise bad_request("`rows` and `cols` must be integers in 1..65535")
        session.resize(cols, rows)
        await conn.json(200, session.info())

    async def h_pty_attach(self, conn: Connection, req: Request, session: PtySession) -> None:
        offered = [t for t in (req.qparam("token"), req.headers.get("x-pty-token")) if t]
        good = session.token.encode()
        if not any(secrets.compare_digest(t.encode("utf-8", "surrogateescape"), good) for t in offered):
            raise HttpError(403, "INVALID_TOKEN", "Invalid token")
        require_frames(req)
        stream = await switch_to_frames(conn)
        session.attach(stream)
        try:
            while True:
                frame = await stream.read()
                if frame is None or frame[0] == FRAME_CLOSE:
                    break
                kind, msg = frame
                if kind != FRAME_BINARY or not msg:
                    continue  # text messages are ignored
                op = msg[0]
                if op == PTY_OP_DATA:
                    if len(msg) > 1:
                        await session.write_input(msg[1:])
                elif op == PTY_OP_RESIZE and len(msg) >= 5:
                    cols, rows = struct.unpack(">HH", msg[1:5])
                    session.resize(cols, rows)
                elif op == PTY_OP_READY:
                    session.on_ready(stream)
        finally:
            session.detach(stream)
            stream.closed = True

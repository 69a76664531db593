"""Routing: which handler answers a request, by method and ``/api/v1/...`` path (404 and 405 otherwise)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

from errors import HttpError
from output_buffer import STDERR, STDOUT
from tcp_tunnel import h_tunnel

if TYPE_CHECKING:
    from file_api import FileApi
    from http_connection import Connection
    from http_request import Request
    from process_api import ProcessApi
    from pty_api import PtyApi


class Router:
    def __init__(self, processes: ProcessApi, files: FileApi, ptys: PtyApi, daemon_info: Callable[[], dict]):
        self.processes = processes
        self.files = files
        self.ptys = ptys
        self.daemon_info = daemon_info  # the body of GET /api/v1/info

    async def dispatch(self, conn: Connection, req: Request) -> None:
        path = req.raw_path
        if not path.startswith("/api/v1/") and "/api/v1/" in path:
            path = path[path.index("/api/v1/") :]
        segs = [unquote(s) for s in path.split("/")[1:]]
        while len(segs) > 1 and segs[-1] == "":
            segs.pop()
        if len(segs) < 3 or segs[0] != "api" or segs[1] != "v1":
            raise HttpError(404, "NOT_FOUND", f"No route for {req.method} {req.raw_path}")
        rest = segs[2:]
        # HEAD is answered as GET without the body (the Connection sends heads only); an upgrade cannot be HEAD
        m = "GET" if req.method == "HEAD" else req.method
        head = rest[0]
        n = len(rest)

        def allow(*methods):
            if m not in methods:
                raise HttpError(
                    405,
                    "METHOD_NOT_ALLOWED",
                    "Method {} not allowed on {} (allowed: {})".format(req.method, path, ", ".join(methods)),
                )

        if head == "health" and n == 1:
            allow("GET")
            return await conn.json(200, {"healthy": True})
        if head == "info" and n == 1:
            allow("GET")
            return await conn.json(200, self.daemon_info())
        if head == "processes":
            if n == 1:
                allow("GET", "POST")
                if m == "GET":
                    return await self.processes.h_list(conn)
                return await self.processes.h_start(conn, req)
            if n == 2 and rest[1] == "run" and m == "POST":
                return await self.processes.h_run(conn, req)
            ref = rest[1]
            if n == 2:
                allow("GET", "DELETE")
                proc = self.processes.lookup(ref)
                if m == "GET":
                    return await conn.json(200, proc.info())
                return await self.processes.h_kill(conn, proc)
            op = rest[2]
            if n == 3 and op == "restart":
                allow("POST")
                return await self.processes.h_restart(conn, self.processes.lookup(ref))
            if n == 3 and op == "signal":
                allow("POST")
                return await self.processes.h_signal(conn, req, self.processes.lookup(ref))
            if n == 3 and op == "stdin":
                allow("POST")
                return await self.processes.h_stdin(conn, req, self.processes.lookup(ref))
            if n == 4 and op == "stdin" and rest[3] == "close":
                allow("POST")
                proc = self.processes.lookup(ref)
                return await self.processes.h_stdin_close(conn, proc)
            if op in ("stdout", "stderr", "output") and (n == 3 or (n == 4 and rest[3] == "follow")):
                allow("GET")
                proc = self.processes.lookup(ref)
                streams = {"stdout": (STDOUT,), "stderr": (STDERR,), "output": (STDOUT, STDERR)}[op]
                if n == 3:
                    return await self.processes.h_output(conn, proc, streams)
                return await self.processes.h_follow(conn, proc, streams)
        if head == "files":
            if n == 1:
                allow("GET", "PUT", "DELETE")
                if m == "GET":
                    return await self.files.h_read_file(conn, req)
                if m == "PUT":
                    return await self.files.h_write_file(conn, req)
                return await self.files.h_delete_file(conn, req)
            if n == 2 and rest[1] == "list":
                allow("GET")
                return await self.files.h_list_dir(conn, req)
        if head == "pty":
            if n == 1:
                allow("GET", "POST")
                if m == "GET":
                    return await self.ptys.h_list(conn)
                return await self.ptys.h_pty_create(conn, req)
            session = self.ptys.pty_session(rest[1])
            if n == 2:
                allow("GET", "DELETE")
                if m == "GET":
                    return await conn.json(200, session.info())
                return await self.ptys.h_pty_delete(conn, session)
            if n == 3 and rest[2] == "ws":
                allow("GET")
                _no_head(req, path)
                return await self.ptys.h_pty_attach(conn, req, session)
            if n == 3 and rest[2] == "resize":
                allow("POST")
                return await self.ptys.h_pty_resize(conn, req, session)
        if head == "tunnels" and n == 2 and rest[1] == "tcp":
            allow("GET")
            _no_head(req, path)
            return await h_tunnel(conn, req)
        raise HttpError(404, "NOT_FOUND", f"No route for {req.method} {req.raw_path}")


def _no_head(req: Request, path: str) -> None:
    """Upgraded routes (PTY, tunnels) answer GET only: a HEAD cannot switch protocols."""
    if req.method == "HEAD":
        raise HttpError(405, "METHOD_NOT_ALLOWED", f"Method HEAD not allowed on {path} (allowed: GET)")

"""Routing: which handler answers a request, by method and ``/api/v1/...`` path, from one table of routes.

A path that no route's pattern matches is a 404; a path that some pattern matches but not with this method
is a 405 naming the methods that are allowed there. HEAD is answered by every GET route that is not an
upgrade, as that GET without the body (the Connection sends heads only).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple
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

# a handler gets the connection, the request and the path's captured segments ({"ref": "12"})
Handler = Callable[["Connection", "Request", dict], Awaitable[None]]

OUTPUT_STREAMS = {"stdout": (STDOUT,), "stderr": (STDERR,), "output": (STDOUT, STDERR)}


class Route(NamedTuple):
    """One row of the table: `pattern` is the path below ``/api/v1/`` split at ``/``; a ``{name}`` segment
    captures any one segment. `upgrade` routes switch protocols, so a HEAD cannot stand in for their GET."""

    method: str
    pattern: tuple[str, ...]
    handler: Handler
    upgrade: bool = False

    def match(self, segs: list[str]) -> dict | None:
        """The captured segments if `segs` fits the pattern, else None."""
        if len(segs) != len(self.pattern):
            return None
        params = {}
        for i, want in enumerate(self.pattern):  # same length, checked above (and no zip(strict=) on 3.9)
            got = segs[i]
            if want.startswith("{"):
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params

    def answers(self, method: str) -> bool:
        return method == self.method or (method == "HEAD" and self.method == "GET" and not self.upgrade)


def _p(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


class Router:
    def __init__(self, processes: ProcessApi, files: FileApi, ptys: PtyApi, daemon_info: Callable[[], dict]):
        self.processes = processes
        self.files = files
        self.ptys = ptys
        self.daemon_info = daemon_info  # the body of GET /api/v1/info
        self.routes = self._table()

    def _table(self) -> list[Route]:
        """Every route; the first row whose pattern and method fit answers (so ``processes/run`` POST is
        the run route, its GET and DELETE the process named ``run``)."""
        pr, fi, pt = self.processes, self.files, self.ptys
        routes = [
            Route("GET", _p("health"), lambda c, r, a: c.json(200, {"healthy": True})),
            Route("GET", _p("info"), lambda c, r, a: c.json(200, self.daemon_info())),
            Route("GET", _p("processes"), lambda c, r, a: pr.h_list(c)),
            Route("POST", _p("processes"), lambda c, r, a: pr.h_start(c, r)),
            Route("POST", _p("processes/run"), lambda c, r, a: pr.h_run(c, r)),
            Route("GET", _p("processes/{ref}"), lambda c, r, a: c.json(200, pr.lookup(a["ref"]).info())),
            Route("DELETE", _p("processes/{ref}"), lambda c, r, a: pr.h_kill(c, pr.lookup(a["ref"]))),
            Route("POST", _p("processes/{ref}/restart"), lambda c, r, a: pr.h_restart(c, pr.lookup(a["ref"]))),
            Route("POST", _p("processes/{ref}/signal"), lambda c, r, a: pr.h_signal(c, r, pr.lookup(a["ref"]))),
            Route("POST", _p("processes/{ref}/stdin"), lambda c, r, a: pr.h_stdin(c, r, pr.lookup(a["ref"]))),
            Route("POST", _p("processes/{ref}/stdin/close"), lambda c, r, a: pr.h_stdin_close(c, pr.lookup(a["ref"]))),
        ]
        for op, streams in OUTPUT_STREAMS.items():
            routes += [
                Route("GET", ("processes", "{ref}", op), _output(pr, streams, follow=False)),
                Route("GET", ("processes", "{ref}", op, "follow"), _output(pr, streams, follow=True)),
            ]
        routes += [
            Route("GET", _p("files"), lambda c, r, a: fi.h_read_file(c, r)),
            Route("PUT", _p("files"), lambda c, r, a: fi.h_write_file(c, r)),
            Route("DELETE", _p("files"), lambda c, r, a: fi.h_delete_file(c, r)),
            Route("GET", _p("files/list"), lambda c, r, a: fi.h_list_dir(c, r)),
            Route("GET", _p("pty"), lambda c, r, a: pt.h_list(c)),
            Route("POST", _p("pty"), lambda c, r, a: pt.h_pty_create(c, r)),
            Route("GET", _p("pty/{sid}"), lambda c, r, a: c.json(200, pt.pty_session(a["sid"]).info())),
            Route("DELETE", _p("pty/{sid}"), lambda c, r, a: pt.h_pty_delete(c, pt.pty_session(a["sid"]))),
            Route("GET", _p("pty/{sid}/ws"), lambda c, r, a: pt.h_pty_attach(c, r, pt.pty_session(a["sid"])), True),
            Route("POST", _p("pty/{sid}/resize"), lambda c, r, a: pt.h_pty_resize(c, r, pt.pty_session(a["sid"]))),
            Route("GET", _p("tunnels/tcp"), lambda c, r, a: h_tunnel(c, r), True),
        ]
        return routes

    async def dispatch(self, conn: Connection, req: Request) -> None:
        """Answer `req` with the first route that fits. Raises HttpError 404 (no pattern fits the path) or
        405 (patterns fit, none with this method)."""
        path = req.raw_path
        if not path.startswith("/api/v1/") and "/api/v1/" in path:
            path = path[path.index("/api/v1/") :]
        segs = [unquote(s) for s in path.split("/")[1:]]
        while len(segs) > 1 and segs[-1] == "":
            segs.pop()
        if len(segs) < 3 or segs[0] != "api" or segs[1] != "v1":
            raise HttpError(404, "NOT_FOUND", f"No route for {req.method} {req.raw_path}")
        allowed: list[str] = []
        for route in self.routes:
            params = route.match(segs[2:])
            if params is None:
                continue
            if route.answers(req.method):
                return await route.handler(conn, req, params)
            if route.method not in allowed:
                allowed.append(route.method)
        if not allowed:
            raise HttpError(404, "NOT_FOUND", f"No route for {req.method} {req.raw_path}")
        raise HttpError(
            405,
            "METHOD_NOT_ALLOWED",
            "Method {} not allowed on {} (allowed: {})".format(req.method, path, ", ".join(allowed)),
        )


def _output(pr: ProcessApi, streams: tuple, follow: bool) -> Handler:
    """The handler of a process's output route: the buffered lines, or a replay-then-follow SSE stream."""
    if follow:
        return lambda c, r, a: pr.h_follow(c, pr.lookup(a["ref"]), streams)
    return lambda c, r, a: pr.h_output(c, pr.lookup(a["ref"]), streams)

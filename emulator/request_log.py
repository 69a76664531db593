"""The request log (issue 17; docs/controls.md): every lifecycle and proxy request, bounded and streamed.

An ASGI middleware (`RequestLogger`) sits in front of each port, outside the gate so refused requests
are logged too, and records one `RequestEntry` per request when it ends: time, port, method, path,
sandbox, status and latency. Entries live in a ring buffer of TLE_REQUEST_LOG_SIZE; `query()` filters
them and `subscribe()` hands each new one to a live reader (the SSE stream). The emulator's own
paths (`/emulator/...`, `/metrics`, `/healthz`) are not logged: a dashboard polling them would drown
what it shows. Times are the emulator's clock (emulator/clock.py), in epoch ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from pydantic import BaseModel

from emulator.clock import now_ms

Port = Literal["api", "proxy"]
# Sandbox ident -> its id (names resolved); None when unknown. `namespace` is None on the proxy port.
Resolver = Callable[[str | None, str], str | None]
_UNLOGGED = ("/emulator/", "/metrics", "/healthz")
_SANDBOX_PATH = re.compile(r"^(?:/v1/namespaces/(?P<ns>[^/]+))?/sandboxes/(?P<ident>[^/]+)")
_CREATE_PATH = re.compile(r"^(?:/v1/namespaces/[^/]+)?/sandboxes/?$")
_LOCAL_HOST = re.compile(r"^([A-Za-z0-9_-]{1,63})\.local(?::[0-9]+)?$")
_MAX_CAPTURE = 64 * 1024  # a create's answer is read for its sandbox id; anything larger is not a create's


class RequestEntry(BaseModel):
    seq: int  # increasing from 1 per emulator run; `?after=` pages with it
    time_ms: int  # when the request arrived
    port: Port
    method: str  # the HTTP method, or WEBSOCKET for an upgrade
    path: str
    query: str
    sandbox: str | None  # the sandbox's id when known, else the id or name the request gave
    status: int  # 101 for an accepted WebSocket; 499 when the client left before any answer
    latency_ms: float  # until the response (or the WebSocket session) ended


def _status_matches(status: int, wanted: str) -> bool:
    wanted = wanted.strip().lower()
    if len(wanted) == 3 and wanted.endswith("xx") and wanted[0].isdigit():
        return status // 100 == int(wanted[0])
    return str(status) == wanted


class RequestLog:
    """A bounded, queryable, subscribable log of requests."""

    def __init__(self, size: int = 10_000) -> None:
        self._entries: deque[RequestEntry] = deque(maxlen=size)
        self._seq = 0
        self._readers: set[asyncio.Queue[RequestEntry | None]] = set()
        self.dropped = 0  # entries a slow stream reader missed
        self.listeners: list[Callable[[RequestEntry], None]] = []  # metrics, called once per entry

    @property
    def capacity(self) -> int:
        return self._entries.maxlen or 0

    def add(self, **fields: Any) -> RequestEntry:
        self._seq += 1
        entry = RequestEntry(seq=self._seq, **fields)
        self._entries.append(entry)
        for listener in self.listeners:
            listener(entry)
        for queue in self._readers:
            try:
                queue.put_nowait(entry)
            except asyncio.QueueFull:
                self.dropped += 1
        return entry

    def query(self, *, sandbox: str | None = None, method: str | None = None, status: str | None = None,
              since: int | None = None, after: int | None = None, port: str | None = None,
              path: str | None = None, limit: int = 1000) -> list[RequestEntry]:
        """The newest `limit` entries that match every filter given, oldest first.

        sandbox: id or name as logged; method: case-insensitive; status: `404` or a class `4xx`;
        since: time_ms >= since (emulator clock, epoch ms); after: seq > after; path: a substring.
        """
        out = [e for e in self._entries if self.matches(e, sandbox=sandbox, method=method, status=status,
                                                         since=since, after=after, port=port, path=path)]
        return out[-limit:] if limit > 0 else []

    @staticmethod
    def matches(e: RequestEntry, *, sandbox: str | None = None, method: str | None = None,
                status: str | None = None, since: int | None = None, after: int | None = None,
                port: str | None = None, path: str | None = None) -> bool:
        return ((sandbox is None or e.sandbox == sandbox)
                and (method is None or e.method == method.upper())
                and (status is None or _status_matches(e.status, status))
                and (since is None or e.time_ms >= since)
                and (after is None or e.seq > after)
                and (port is None or e.port == port)
                and (path is None or path in e.path))

    @contextlib.asynccontextmanager
    async def subscribe(self, backlog: int = 1000) -> AsyncIterator[asyncio.Queue[RequestEntry | None]]:
        """A queue that receives every new entry (None once the log closes); a full queue drops entries."""
        queue: asyncio.Queue[RequestEntry | None] = asyncio.Queue(maxsize=backlog)
        self._readers.add(queue)
        try:
            yield queue
        finally:
            self._readers.discard(queue)

    def close(self) -> None:
        """End every live stream (at shutdown: an open stream would keep the server from stopping)."""
        for queue in self._readers:
            if queue.full():  # the end must get through: it displaces the oldest unread entry
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(None)


class RequestLogger:
    """ASGI middleware that adds each http and websocket request of one port to a RequestLog."""

    def __init__(self, app: Any, log: RequestLog, port: Port, resolve: Resolver) -> None:
        self.app = app
        self.log = log
        self.port = port
        self.resolve = resolve

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or (self.port == "api" and path.startswith(_UNLOGGED)):
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        arrived = now_ms()
        status = 0
        capture = bytearray() if scope.get("method") == "POST" and _CREATE_PATH.match(path) else None

        async def logging_send(message: dict[str, Any]) -> None:
            nonlocal status
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
            elif kind == "websocket.accept":
                status = 101
            elif kind == "websocket.close" and not status:
                status = 403  # closed before accepting: what the client sees
            elif kind == "http.response.body" and capture is not None and len(capture) < _MAX_CAPTURE:
                capture.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        finally:
            self.log.add(time_ms=arrived, port=self.port, path=path,
                         method=scope.get("method", "WEBSOCKET") if scope["type"] == "http" else "WEBSOCKET",
                         query=scope.get("query_string", b"").decode("latin-1"),
                         sandbox=self._sandbox(scope, path, capture), status=status or 499,
                         latency_ms=round((time.monotonic() - t0) * 1000, 3))

    def _sandbox(self, scope: dict[str, Any], path: str, capture: bytearray | None) -> str | None:
        if self.port == "proxy":
            ident = _proxy_ident(scope)
            return None if ident is None else (self.resolve(None, ident) or ident)
        if capture:
            with contextlib.suppress(ValueError, AttributeError):
                found = json.loads(bytes(capture)).get("sandbox_id")
                return str(found) if found else None
        m = _SANDBOX_PATH.match(path)
        if m is None:
            return None
        return self.resolve(m.group("ns") or "default", m.group("ident")) or m.group("ident")


def _proxy_ident(scope: dict[str, Any]) -> str | None:
    """The sandbox a proxy request names (PROTOCOL.md §1.2): the explicit header, else `<ident>.local`."""
    host = None
    for key, value in scope["headers"]:
        key = key.lower()
        if key == b"x-tensorlake-sandbox-id":
            return value.decode("latin-1").strip() or None
        if key == b"host":
            host = value.decode("latin-1").strip()
    m = _LOCAL_HOST.match(host or "")
    return m.group(1) if m else None

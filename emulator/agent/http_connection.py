"""One HTTP/1.1 connection on the agent's socket: the keep-alive request loop, and the response helpers
(fixed-length, chunked and SSE answers, JSON errors) that handlers write with.

Framing rules kept here for every response (RFC 9112 section 6.3; the proxy's pooled connection depends on them,
and tests/agent parse every kind of answer with h11): a response to ``HEAD`` carries the head only (the
``Content-Length`` or ``Transfer-Encoding`` a ``GET`` would have, never a body byte); ``204`` has neither a
body nor a ``Content-Length``; ``100 Continue`` is only sent before the final response; a body whose promised
length cannot be met is cut by closing the connection, never padded or left for the next request."""

from __future__ import annotations

import asyncio
import json
import traceback
from collections.abc import Awaitable, Callable

from agent_log import log
from errors import HttpError
from http_request import Body, Request

MAX_HEAD = 64 * 1024
NO_BODY_STATUSES = (204, 304)
DRAIN_LEFTOVER_MAX = 4 * 1024 * 1024

REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
}


class ResponseComplete(Exception):
    """Raised by the response helpers once the head of a response to HEAD is sent: the handler stops there."""


class Connection:
    def __init__(
        self,
        dispatch: Callable[[Connection, Request], Awaitable[None]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ):
        self.dispatch = dispatch  # routes one request and writes its response
        self.reader = reader
        self.writer = writer
        self.started = False  # response head sent for the current request
        self.close_after = False
        self.streaming = False
        self.head_only = False  # the current request is a HEAD: heads are sent, body bytes never

    # -- response helpers --
    def _head(self, status: int, headers: list) -> bytes:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
        for k, v in headers:
            lines.append(f"{k}: {v}")
        if self.close_after:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(self, status: int, body: bytes = b"", content_type: str | None = None) -> None:
        """A complete response with a fixed-length body (none for 204/304, head only for HEAD)."""
        headers = []
        if status not in NO_BODY_STATUSES:
            if content_type:
                headers.append(("Content-Type", content_type))
            headers.append(("Content-Length", str(len(body))))
        if status in NO_BODY_STATUSES or self.head_only:
            body = b""
        self.started = True
        self.writer.write(self._head(status, headers) + body)
        await self.writer.drain()

    async def json(self, status: int, obj) -> None:
        await self.send(status, json.dumps(obj).encode("utf-8"), "application/json")

    async def error(self, status: int, code: str, message: str) -> None:
        await self.json(status, {"error": message, "code": code})

    async def start_fixed(self, status: int, content_type: str, length: int) -> None:
        """The head of a response whose body of `length` bytes follows with write_body().

        Raises ResponseComplete for a HEAD request (the head is all it gets)."""
        self.started = True
        head = self._head(status, [("Content-Type", content_type), ("Content-Length", str(length))])
        self.writer.write(head)
        if self.head_only:
            await self.writer.drain()
            raise ResponseComplete

    async def write_body(self, data: bytes) -> None:
        """Body bytes of a response started with start_fixed()."""
        self.writer.write(data)
        await self.writer.drain()

    async def start_chunked(self, status: int, content_type: str, extra: list | None = None) -> None:
        """The head of a chunked response; raises ResponseComplete for a HEAD request."""
        self.started = True
        headers = [("Content-Type", content_type), ("Transfer-Encoding", "chunked")]
        if extra:
            headers.extend(extra)
        self.writer.write(self._head(status, headers))
        await self.writer.drain()
        if self.head_only:
            raise ResponseComplete
        self.streaming = True

    async def chunk(self, data: bytes) -> None:
        if data:
            self.writer.write(b"%x\r\n" % len(data) + data + b"\r\n")
            await self.writer.drain()

    async def end_chunked(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()
        self.streaming = False

    async def start_sse(self) -> None:
        await self.start_chunked(200, "text/event-stream", [("Cache-Control", "no-cache")])

    # -- request loop --
    async def serve(self) -> None:
        try:
            while True:
                try:
                    head = await self.reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    self.close_after = True
                    await self.error(431, "BAD_REQUEST", "request head too large")
                    return
                self.started = False
                self.streaming = False
                self.head_only = False
                req = self._parse_head(head)
                if req is None:
                    self.close_after = True
                    await self.error(400, "BAD_REQUEST", "malformed HTTP request")
                    return
                await self._handle(req)
                if self.close_after:
                    return
                if not req.body.done:
                    try:
                        ok = await asyncio.wait_for(req.body.discard(DRAIN_LEFTOVER_MAX), 30)
                    except Exception:
                        ok = False
                    if not ok:
                        return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception:
            log("connection error:\n" + traceback.format_exc())
        finally:
            try:
                self.writer.close()
            except Exception:
                pass

    def _parse_head(self, head: bytes) -> Request | None:
        try:
            text = head.decode("latin-1")
            lines = text.split("\r\n")
            while lines and lines[0] == "":  # tolerate stray CRLF before a request
                lines.pop(0)
            if not lines:
                return None
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                return None
            method, target, version = parts
            headers: dict = {}
            for line in lines[1:]:
                if not line:
                    continue
                name, sep, value = line.partition(":")
                if not sep:
                    return None
                name = name.strip().lower()
                value = value.strip()
                if name in headers:
                    headers[name] = headers[name] + ", " + value
                else:
                    headers[name] = value
        except Exception:
            return None
        conn_hdr = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            if "keep-alive" not in conn_hdr:
                self.close_after = True
        elif "close" in conn_hdr:
            self.close_after = True
        te = headers.get("transfer-encoding", "").lower()
        chunked = "chunked" in te
        length = None
        if not chunked and "content-length" in headers:
            try:
                length = int(headers["content-length"].split(",")[0].strip())
                if length < 0:
                    raise ValueError
            except ValueError:
                return None
        expect = "100-continue" in headers.get("expect", "").lower()
        return Request(method.upper(), target, version, headers, Body(self, length, chunked, expect))

    async def _handle(self, req: Request) -> None:
        self.head_only = req.method == "HEAD"
        try:
            await self.dispatch(self, req)
        except ResponseComplete:
            pass
        except HttpError as e:
            if not self.started:
                await self.error(e.status, e.code, e.message)
            else:
                self.close_after = True
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close_after = True
        except asyncio.LimitOverrunError:
            self.close_after = True
            if not self.started:
                await self.error(400, "BAD_REQUEST", "malformed request body")
        except asyncio.CancelledError:
            self.close_after = True
            raise
        except Exception as e:
            log(f"unhandled error in {req.method} {req.target}:\n{traceback.format_exc()}")
            if not self.started:
                self.close_after = True
                await self.error(500, "INTERNAL", f"internal agent error: {type(e).__name__}: {e}")
            else:
                self.close_after = True
        if self.streaming:  # a stream was interrupted: the framing is broken, close
            self.close_after = True

"""An HTTP/1.1 request as the handlers see it: method, target, headers, query, and the streaming body
(``Content-Length`` or ``Transfer-Encoding: chunked``, with ``Expect: 100-continue``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from errors import HttpError, bad_request

if TYPE_CHECKING:
    from http_connection import Connection

IO_CHUNK = 256 * 1024
MAX_JSON_BODY = 16 * 1024 * 1024


class Body:
    """Streaming request body: Content-Length or chunked."""

    def __init__(self, conn: Connection, length: int | None, chunked: bool, expect_continue: bool):
        self.conn = conn
        self.reader = conn.reader
        self.remaining = length or 0
        self.chunked = chunked
        self.chunk_left = 0
        self.done = not chunked and not length
        self.expect_continue = expect_continue
        self.received = 0

    async def _continue(self) -> None:
        if self.expect_continue:
            self.expect_continue = False
            if not self.conn.started:
                self.conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await self.conn.writer.drain()

    async def read_chunk(self, maxsize: int = IO_CHUNK) -> bytes:
        """Next piece of the body; b'' at the end. Raises ConnectionError if the client vanished."""
        if self.done:
            return b""
        await self._continue()
        if not self.chunked:
            data = await self.reader.read(min(self.remaining, maxsize))
            if not data:
                raise ConnectionResetError("client closed the connection in the middle of the request body")
            self.remaining -= len(data)
            self.received += len(data)
            if self.remaining <= 0:
                self.done = True
            return data
        while True:
            if self.chunk_left == 0:
                line = await self.reader.readuntil(b"\r\n")
                size_txt = line[:-2].split(b";", 1)[0].strip()
                try:
                    size = int(size_txt, 16)
                except ValueError:
                    size = -1
                if size < 0:
                    self.conn.close_after = True  # the framing is lost: this connection cannot be reused
                    raise bad_request("malformed chunked request body")
                if size == 0:
                    while True:  # trailers
                        tline = await self.reader.readuntil(b"\r\n")
                        if tline == b"\r\n":
                            break
                    self.done = True
                    return b""
                self.chunk_left = size
            data = await self.reader.read(min(self.chunk_left, maxsize))
            if not data:
                raise ConnectionResetError("client closed the connection in the middle of the request body")
            self.chunk_left -= len(data)
            self.received += len(data)
            if self.chunk_left == 0:
                crlf = await self.reader.readexactly(2)
                if crlf != b"\r\n":
                    self.conn.close_after = True
                    raise bad_request("malformed chunked request body")
            if data:
                return data

    async def read_all(self, limit: int = MAX_JSON_BODY) -> bytes:
        parts = []
        total = 0
        while True:
            data = await self.read_chunk()
            if not data:
                break
            total += len(data)
            if total > limit:
                raise HttpError(413, "PAYLOAD_TOO_LARGE", f"request body larger than {limit} bytes")
            parts.append(data)
        return b"".join(parts)

    async def discard(self, limit: int) -> bool:
        """Read and drop the rest of the body; False if more than `limit` bytes remained."""
        dropped = 0
        if self.expect_continue:
            return False  # the client waits for our go-ahead; it never sent the body
        while not self.done:
            data = await self.read_chunk()
            dropped += len(data)
            if dropped > limit:
                return False
        return True


class Request:
    def __init__(self, method: str, target: str, version: str, headers: dict, body: Body):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        path, _, query = target.partition("?")
        self.raw_path = path
        self.query = parse_qs(query, keep_blank_values=True, errors="surrogateescape")
        self.body = body

    def qparam(self, name: str) -> str | None:
        vals = self.query.get(name)
        return vals[0] if vals else None


async def read_json(req: Request) -> dict:
    raw = await req.body.read_all(MAX_JSON_BODY)
    if not raw.strip():
        raise bad_request("request body must be a JSON object")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise bad_request(f"malformed JSON body: {e}") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body

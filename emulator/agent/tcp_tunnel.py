"""TCP tunnels (``GET /api/v1/tunnels/tcp?port=N``, upgraded): a connection to a port inside the sandbox,
relayed verbatim both ways as binary frames."""

from __future__ import annotations

import asyncio
import errno
from typing import TYPE_CHECKING

from errors import HttpError, bad_request
from frame_protocol import FRAME_BINARY, FRAME_CLOSE, FrameStream
from frame_upgrade import require_frames, switch_to_frames

if TYPE_CHECKING:
    from http_connection import Connection
    from http_request import Request

TUNNEL_CONNECT_TIMEOUT = 5.0
TUNNEL_READ = 64 * 1024


async def open_local_port(port: int) -> tuple:
    """A TCP connection to `port` inside the sandbox (IPv4 loopback, then IPv6). Raises OSError."""
    try:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TUNNEL_CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as first:
        try:
            return await asyncio.wait_for(asyncio.open_connection("::1", port), TUNNEL_CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            pass
        if isinstance(first, asyncio.TimeoutError):
            raise OSError(errno.ETIMEDOUT, "connection timed out") from None
        raise first


async def relay_tunnel(stream: FrameStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes both ways until either side closes; the client is told when the in-sandbox peer closed."""

    async def from_sandbox() -> None:
        while True:
            data = await reader.read(TUNNEL_READ)
            if not data:
                return
            stream.write(FRAME_BINARY, data)
            await stream.drain()

    async def to_sandbox() -> None:
        while True:
            frame = await stream.read()
            if frame is None or frame[0] == FRAME_CLOSE:
                return
            if frame[1]:
                writer.write(frame[1])
                await writer.drain()

    up = asyncio.ensure_future(from_sandbox())
    down = asyncio.ensure_future(to_sandbox())
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if up.done():
            failed = up.cancelled() or up.exception() is not None
            stream.close(1011 if failed else 1000, "connection reset in the sandbox" if failed else "")
    finally:
        for t in (up, down):
            t.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        try:
            writer.close()
        except Exception:
            pass
        stream.close(1000)


async def h_tunnel(conn: Connection, req: Request) -> None:
    try:
        port = int(req.qparam("port") or "", 10)
    except ValueError:
        port = 0
    if not 0 < port <= 65535:
        raise bad_request("query parameter `port` must be an integer in 1..65535")
    require_frames(req)
    try:
        reader, writer = await open_local_port(port)
    except OSError as e:
        raise HttpError(
            502,
            "TUNNEL_CONNECT_FAILED",
            f"cannot connect to port {port} inside the sandbox: {e.strerror or e}",
        ) from None
    stream = await switch_to_frames(conn)
    await relay_tunnel(stream, reader, writer)

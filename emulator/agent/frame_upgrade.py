"""The HTTP side of an upgrade to the frame protocol (frame_protocol): whether a request asks for it, and
the 101 answer after which the connection carries frames."""

from __future__ import annotations

from typing import TYPE_CHECKING

from errors import HttpError
from frame_protocol import UPGRADE_PROTOCOL, FrameStream

if TYPE_CHECKING:
    from http_connection import Connection
    from http_request import Request


def wants_frames(req: Request) -> bool:
    return (
        req.headers.get("upgrade", "").strip().lower() == UPGRADE_PROTOCOL
        and "upgrade" in req.headers.get("connection", "").lower()
    )


def require_frames(req: Request) -> None:
    if not wants_frames(req):
        raise HttpError(
            426, "UPGRADE_REQUIRED", "this endpoint is a WebSocket: connect to it through the sandbox proxy"
        )


async def switch_to_frames(conn: Connection) -> FrameStream:
    """Answer 101: from here on the connection carries frames, and it is closed when the handler returns."""
    conn.started = True
    conn.close_after = True
    head = f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE_PROTOCOL}\r\n\r\n"
    conn.writer.write(head.encode())
    await conn.writer.drain()
    return FrameStream(conn)

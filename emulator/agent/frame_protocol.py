"""The frame protocol of upgraded connections (``Upgrade: tle-frames``), which the proxy maps to WebSocket
messages: its constants and the agent's end of such a connection (FrameStream).

Defined once for both ends: the proxy imports this module as ``emulator.agent.frame_protocol``, so it imports
nothing but the standard library (the agent's own modules are top-level names only inside the sandbox). The
HTTP side of the upgrade is frame_upgrade."""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from http_connection import Connection

# An upgraded connection ("Upgrade: tle-frames") carries frames of 1 byte kind + 4 bytes big-endian length +
# payload; the proxy maps each one to one WebSocket message or close, both ways.
FRAME_HEAD = struct.Struct(">BI")
FRAME_BINARY = 0  # one binary WebSocket message
FRAME_TEXT = 1  # one text WebSocket message (UTF-8)
FRAME_CLOSE = 2  # close: u16 big-endian code + UTF-8 reason
MAX_FRAME = 32 * 1024 * 1024
UPGRADE_PROTOCOL = "tle-frames"


class FrameStream:
    """The agent's end of an upgraded connection (see switch_to_frames)."""

    def __init__(self, conn: Connection):
        self.reader = conn.reader
        self.writer = conn.writer
        self.closed = False

    async def read(self) -> tuple | None:
        """(kind, payload) of the next frame; None once the proxy went away."""
        try:
            kind, n = FRAME_HEAD.unpack(await self.reader.readexactly(FRAME_HEAD.size))
            if n > MAX_FRAME:
                raise ConnectionResetError(f"frame of {n} bytes is too large")
            return kind, (await self.reader.readexactly(n) if n else b"")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed = True
            return None

    def write(self, kind: int, payload: bytes = b"") -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(FRAME_HEAD.pack(kind, len(payload)) + payload)

    def buffered(self) -> int:
        transport = self.writer.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame and end the connection (bytes already written are still delivered)."""
        if self.closed:
            return
        self.write(FRAME_CLOSE, struct.pack(">H", code) + reason.encode("utf-8")[:120])
        self.closed = True
        try:
            self.writer.close()
        except Exception:
            pass

"""The frame protocol of upgraded connections (``Upgrade: tle-frames``) between the proxy and the in-sandbox
agent: the proxy maps each frame to one WebSocket message or close, both ways (PROTOCOL.md sections 9 and 10).

The agent's end is the Go program in agent/ (frames.go); these constants must match it."""

from __future__ import annotations

import struct

# 1 byte kind + 4 bytes big-endian length + payload
FRAME_HEAD = struct.Struct(">BI")
FRAME_BINARY = 0  # one binary WebSocket message
FRAME_TEXT = 1  # one text WebSocket message (UTF-8)
FRAME_CLOSE = 2  # close: u16 big-endian code + UTF-8 reason
MAX_FRAME = 32 * 1024 * 1024
UPGRADE_PROTOCOL = "tle-frames"

"""Server-sent events: the encoding of output lines, and the replay-then-follow stream over an output buffer
that ``run`` and ``.../follow`` answers are made of."""

from __future__ import annotations

import asyncio
import json
from json.encoder import encode_basestring_ascii as _json_str
from operator import attrgetter
from typing import TYPE_CHECKING

from agent_log import now_ms
from output_buffer import STDERR, STDOUT, STREAM_NAMES, OutputLine, marker_text

if TYPE_CHECKING:
    from http_connection import Connection
    from output_buffer import OutputBuffer
    from process_table import Proc

KEEPALIVE_SECS = 15.0
SSE_BATCH_LINES = 5000


def sse_event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


_stream_of = attrgetter("stream")


def output_events(items: list[OutputLine]) -> bytes:
    """SSE output events for buffer lines, as sse_event() would write them."""
    names = STREAM_NAMES
    return "".join(
        [
            f'event: output\ndata: {{"line": {_json_str(it.text)}, "timestamp": {it.timestamp_ms}, '
            f'"stream": "{names[it.stream]}"}}\n\n'
            for it in items
        ]
    ).encode()


def output_event(line: str, ts: int, stream: str) -> bytes:
    # same bytes as sse_event("output", {...}); built by hand because it runs once per output line
    return (
        'event: output\ndata: {"line": '
        + _json_str(line)
        + ', "timestamp": '
        + str(ts)
        + ', "stream": "'
        + stream
        + '"}\n\n'
    ).encode()


class _Cursor:
    """Where one stream stands in an output buffer, and how many lines of each stream lie before it."""

    def __init__(self, buf: OutputBuffer, streams: tuple):
        self.buf = buf
        self.streams = streams
        self.want_all = len(streams) == 2
        self.marker_stream = STREAM_NAMES[streams[0]] if len(streams) == 1 else "stderr"
        self.seq = 0
        self.seen = [0, 0]  # per stream: how many of its lines lie before `seq`

    def next_batch(self) -> list[bytes]:
        """The events of the next batch of lines (at most SSE_BATCH_LINES), led by a marker for lines that
        were dropped before this stream could send them; moves past them."""
        buf, streams = self.buf, self.streams
        out = []
        if self.seq < buf.first_seq:
            skipped = sum(buf.dropped[s] - self.seen[s] for s in streams)
            self.seen = list(buf.dropped)
            self.seq = buf.first_seq
            if skipped > 0:
                out.append(output_event(marker_text(skipped, buf.limit), now_ms(), self.marker_stream))
        end = min(buf.next_seq, self.seq + SSE_BATCH_LINES)
        if self.seq < end:
            items = buf.slice(self.seq, end)
            self.seq = end
            n_err = sum(map(_stream_of, items))  # STDERR is 1, STDOUT 0
            self.seen[STDERR] += n_err
            self.seen[STDOUT] += len(items) - n_err
            if self.want_all or n_err == (len(items) if streams[0] == STDERR else 0):
                out.append(output_events(items))
            else:
                only = streams[0]
                out.append(output_events([it for it in items if it.stream == only]))
        return out


async def stream_lines(conn: Connection, proc: Proc, streams: tuple) -> None:
    """Replay the buffer from the start, then follow it until the entry is finished."""
    buf = proc.buffer
    cursor = _Cursor(buf, streams)
    eof_watch: asyncio.Future[bytes] = asyncio.ensure_future(conn.reader.read(1))
    waiter = None
    try:
        while True:
            out = cursor.next_batch()
            if out:
                await conn.chunk(b"".join(out))
            if cursor.seq < buf.next_seq:
                await asyncio.sleep(0)  # a long backlog: let other connections run between batches
                continue
            if out:
                continue
            if buf.closed:
                return
            if waiter is None or waiter.done():
                waiter = buf.waiter()
            done, _ = await asyncio.wait(
                {waiter, eof_watch}, timeout=KEEPALIVE_SECS, return_when=asyncio.FIRST_COMPLETED
            )
            if eof_watch in done:
                if (
                    eof_watch.cancelled()
                    or eof_watch.exception() is not None
                    or eof_watch.result() == b""
                ):
                    raise ConnectionResetError("client went away")
                # the client sent more bytes (pipelining): close the connection after this response
                conn.close_after = True
                eof_watch = asyncio.get_running_loop().create_future()
            if not done:
                await conn.chunk(b": keep-alive\n\n")
    finally:
        if waiter is not None and not waiter.done():
            waiter.cancel()
        if not eof_watch.done():
            eof_watch.cancel()
            try:
                await eof_watch  # let the read really give up its place on the reader
            except BaseException:
                pass

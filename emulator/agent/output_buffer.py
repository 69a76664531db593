"""The bounded per-process output buffer that GET, follow and run streams all read from."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

STDOUT = 0
STDERR = 1
STREAM_NAMES = ("stdout", "stderr")


class OutputLine(NamedTuple):
    """One line of a process's output as the buffer holds it (a tuple, so a backlog stays cheap)."""

    stream: int  # STDOUT or STDERR
    text: str  # the line without its newline, decoded as UTF-8 (invalid bytes replaced)
    timestamp_ms: int  # when the agent read it, ms since the epoch
    cost: int  # bytes it counts against the buffer limit: its raw length plus the newline

    @classmethod
    def of(cls, stream: int, raw: bytes, timestamp_ms: int) -> OutputLine:
        """The record of `raw` (one line's bytes, without the newline) read from `stream`."""
        return cls(stream, raw.decode("utf-8", "replace"), timestamp_ms, len(raw) + 1)

    @classmethod
    def message(cls, stream: int, text: str, timestamp_ms: int) -> OutputLine:
        """A line the agent writes itself (a spawn failure), costed like the process's own output."""
        return cls(stream, text, timestamp_ms, len(text) + 1)


class OutputBuffer:
    """Bounded line buffer shared by GET, follow and run streams.

    Lines are OutputLine records. Sequence numbers grow forever; the oldest lines are dropped
    when the byte cost exceeds the limit, and counted per stream.
    """

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self._lines: list[OutputLine | None] = []  # None: dropped, not yet compacted away
        self._base = 0  # seq of self._lines[0]
        self._start = 0  # index of the first retained line in self._lines
        self.total_bytes = 0
        self.dropped = [0, 0]
        self.closed = False
        self._waiters: list = []

    @property
    def first_seq(self) -> int:
        return self._base + self._start

    @property
    def next_seq(self) -> int:
        return self._base + len(self._lines)

    def slice(self, start_seq: int, end_seq: int) -> list[OutputLine]:
        return self._lines[start_seq - self._base : end_seq - self._base]  # type: ignore[return-value]  # seqs >= first_seq are never None

    def extend(self, items: list[OutputLine]) -> None:
        if not items:
            return
        self._lines.extend(items)
        for it in items:
            self.total_bytes += it.cost
        if self.total_bytes > self.limit:
            self._trim()
        self._notify()

    def _trim(self) -> None:
        lines = self._lines
        end = len(lines) - 1  # always keep the newest line
        while self.total_bytes > self.limit and self._start < end:
            it = lines[self._start]
            assert it is not None  # lines before _start are the only Nones
            lines[self._start] = None
            self._start += 1
            self.total_bytes -= it.cost
            self.dropped[it.stream] += 1
        if self._start > 1024 and self._start * 2 > len(lines):
            del lines[: self._start]
            self._base += self._start
            self._start = 0

    def close(self) -> None:
        self.closed = True
        self._notify()

    def reopen(self) -> None:
        self.closed = False

    def waiter(self) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return fut

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def marker(self, streams: tuple) -> str | None:
        n = sum(self.dropped[s] for s in streams)
        if n <= 0:
            return None
        return marker_text(n, self.limit)

    def snapshot(self, streams: tuple) -> list:
        out = []
        m = self.marker(streams)
        if m is not None:
            out.append(m)
        want_all = len(streams) == 2
        for i in range(self._start, len(self._lines)):
            it = self._lines[i]
            assert it is not None
            if want_all or it.stream in streams:
                out.append(it.text)
        return out


def marker_text(n: int, limit: int) -> str:
    return f"[tensorlake-emulator: {n} earlier lines dropped, output buffer limit {limit} bytes]"

"""The bounded per-process output buffer that GET, follow and run streams all read from."""

from __future__ import annotations

import asyncio

STDOUT = 0
STDERR = 1
STREAM_NAMES = ("stdout", "stderr")


class OutputBuffer:
    """Bounded line buffer shared by GET, follow and run streams.

    Lines are (stream, text, timestamp_ms, cost). Sequence numbers grow forever; the oldest lines are dropped
    when the byte cost exceeds the limit, and counted per stream.
    """

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self._lines: list = []
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

    def slice(self, start_seq: int, end_seq: int) -> list:
        return self._lines[start_seq - self._base : end_seq - self._base]

    def extend(self, items: list) -> None:
        if not items:
            return
        self._lines.extend(items)
        for it in items:
            self.total_bytes += it[3]
        if self.total_bytes > self.limit:
            self._trim()
        self._notify()

    def _trim(self) -> None:
        lines = self._lines
        end = len(lines) - 1  # always keep the newest line
        while self.total_bytes > self.limit and self._start < end:
            it = lines[self._start]
            lines[self._start] = None
            self._start += 1
            self.total_bytes -= it[3]
            self.dropped[it[0]] += 1
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
            if want_all or it[0] in streams:
                out.append(it[1])
        return out


def marker_text(n: int, limit: int) -> str:
    return f"[tensorlake-emulator: {n} earlier lines dropped, output buffer limit {limit} bytes]"

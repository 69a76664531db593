"""The emulator's clock: wall-clock time plus an offset that only moves forward (issue 17, clock control).

Every time the emulator stamps or compares (record times, `timeout_secs` deadlines, the
`max_pending_secs` check, the request log) reads `now_ms()` here, so advancing the offset makes
deadlines that would fall within it due at once, and what they stamp stays consistent: a sandbox
created after an advance is not older than its own deadline. The offset is process-wide (one
emulator per process) and persisted by the control API in the store's meta table, so a restart keeps
the emulated time and deadlines already stored against it.
"""

from __future__ import annotations

import threading
import time

# Large enough for any test (~68 years), small enough that epoch ms stay well inside an i64.
MAX_ADVANCE_SECS = 2**31 - 1


class EmulatorClock:
    """Epoch milliseconds = wall clock + `offset_ms`. Thread-safe; the offset never decreases."""

    def __init__(self) -> None:
        self._offset_ms = 0
        self._lock = threading.Lock()

    @property
    def offset_ms(self) -> int:
        return self._offset_ms

    def now_ms(self) -> int:
        """The emulated time in epoch milliseconds."""
        return int(time.time() * 1000) + self._offset_ms

    def advance(self, seconds: float) -> int:
        """Move the clock forward by `seconds` (> 0, at most MAX_ADVANCE_SECS); the new offset in ms.

        Raises ValueError for a value out of that range (the API maps it to a 400 before calling).
        """
        if not (0 < seconds <= MAX_ADVANCE_SECS):
            raise ValueError(f"seconds must be > 0 and at most {MAX_ADVANCE_SECS}; got {seconds}")
        with self._lock:
            self._offset_ms += int(round(seconds * 1000))
            return self._offset_ms

    def restore(self, offset_ms: int) -> None:
        """Set the offset persisted by an earlier run (start-up only); a negative value is ignored."""
        with self._lock:
            self._offset_ms = max(0, int(offset_ms))


CLOCK = EmulatorClock()


def now_ms() -> int:
    """The emulator's time in epoch milliseconds (wall clock plus the advanced offset)."""
    return CLOCK.now_ms()

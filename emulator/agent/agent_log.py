"""The agent's log lines (on its stderr, i.e. the container's log) and the wall-clock millisecond stamps that
output lines, processes and sessions carry."""

from __future__ import annotations

import sys
import time


def now_ms() -> int:
    return int(time.time() * 1000)


def log(msg: str) -> None:
    try:
        sys.stderr.write(f"tle-agent: {msg}\n")
        sys.stderr.flush()
    except Exception:
        pass

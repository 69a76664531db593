"""Prometheus metrics (issue 17; docs/controls.md), served at `GET /metrics` of the API port.

Counters and histograms are module-level in one registry of their own (not the library's global
one, so nothing else a process imports shows up here). The manager's operations are timed by
wrapping the coroutine it spawns (`timed`); requests are counted by the request log's listener
(`observe_request`); what is true now (sandboxes by state, snapshots, the clock) is read at scrape
time from the manager (`StateCollector`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from emulator.checkpoints.engine import dir_size
from emulator.clock import CLOCK
from emulator.model.records import SandboxRecord, SnapshotRecord
from emulator.model.states import SandboxStatus
from emulator.request_log import RequestEntry

log = logging.getLogger(__name__)
T = TypeVar("T")
REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
_BYTES = tuple(float(2**n) for n in range(16, 36, 2))  # 64 KiB .. 16 GiB

OPERATIONS = Counter("tle_operations", "Sandbox operations that ended, by operation (create, restore, suspend, "
                     "resume, checkpoint) and outcome (success, failure, cancelled)",
                     ["operation", "outcome"], registry=REGISTRY)
OPERATION_SECONDS = Histogram("tle_operation_duration_seconds", "Duration of sandbox operations, from the "
                              "request to the end of the container work (seconds)", ["operation"],
                              buckets=_SECONDS, registry=REGISTRY)
REQUESTS = Counter("tle_http_requests", "HTTP and WebSocket requests by port (api, proxy), method and status",
                   ["port", "method", "status"], registry=REGISTRY)
REQUEST_SECONDS = Histogram("tle_http_request_duration_seconds", "Request latency by port, until the response "
                            "ended (a follow stream: its whole length)", ["port"], buckets=_SECONDS,
                            registry=REGISTRY)
DUMP_BYTES = Histogram("tle_criu_dump_bytes", "Size of CRIU memory dumps by kind (suspend, checkpoint), bytes",
                       ["kind"], buckets=_BYTES, registry=REGISTRY)

Inventory = Callable[[], tuple[Iterable[SandboxRecord], Iterable[SnapshotRecord]]]


class StateCollector(Collector):
    """Gauges read at scrape time: sandboxes by state, snapshots by status and their bytes, the clock."""

    def __init__(self) -> None:
        self.inventory: Inventory | None = None

    def collect(self) -> Iterable[Any]:
        sandboxes, snapshots = self.inventory() if self.inventory else ((), ())
        by_state = Tally(str(r.status) for r in sandboxes)
        gauge = GaugeMetricFamily("tle_sandboxes", "Sandboxes known to the emulator, by state", labels=["state"])
        for state in SandboxStatus:
            gauge.add_metric([str(state)], by_state.get(str(state), 0))
        yield gauge
        snaps = list(snapshots)
        count = GaugeMetricFamily("tle_snapshots", "Snapshots by status", labels=["status"])
        for status, n in sorted(Tally(s.status for s in snaps).items()):
            count.add_metric([status], n)
        yield count
        yield GaugeMetricFamily("tle_snapshot_bytes", "Bytes of the stored snapshots (dump and filesystem image)",
                                value=sum(s.size_bytes or 0 for s in snaps))
        yield GaugeMetricFamily("tle_clock_offset_seconds", "How far the emulator's clock was advanced",
                                value=CLOCK.offset_ms / 1000)


STATE = StateCollector()
REGISTRY.register(STATE)


def exposition() -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(REGISTRY)


async def timed(operation: str, work: Awaitable[T], ok: Callable[[], bool],
                after: Callable[[], Awaitable[None]] | None = None) -> T | None:
    """Await `work`, then count it with outcome success when `ok()`, else failure (cancelled when it was),
    and observe its duration. `after` runs on success (a dump size); its errors are only logged."""
    t0 = time.monotonic()
    outcome = "failure"
    try:
        result = await work
        outcome = "success" if ok() else "failure"
        return result
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        OPERATIONS.labels(operation, outcome).inc()
        OPERATION_SECONDS.labels(operation).observe(time.monotonic() - t0)
        if outcome == "success" and after is not None:
            try:
                await after()
            except Exception:  # a metric must never fail the operation it measures
                log.exception("metrics: measuring after %s failed", operation)


def count(operation: str, outcome: str, seconds: float) -> None:
    """Count an operation that needed no background work (a create served by a warm container)."""
    OPERATIONS.labels(operation, outcome).inc()
    OPERATION_SECONDS.labels(operation).observe(seconds)


async def observe_dump(kind: str, path: str | Path | None) -> None:
    """The size of a CRIU dump folder (when it is there to measure) into tle_criu_dump_bytes."""
    if path is None:
        return
    size = await asyncio.to_thread(dir_size, Path(path))  # 0 when it is not there
    if size:
        DUMP_BYTES.labels(kind).observe(size)


def observe_request(entry: RequestEntry) -> None:
    """A request log listener: count and time every logged request."""
    REQUESTS.labels(entry.port, entry.method, str(entry.status)).inc()
    REQUEST_SECONDS.labels(entry.port).observe(entry.latency_ms / 1000)

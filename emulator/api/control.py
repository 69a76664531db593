"""The emulator's own test controls under `/emulator/` (issue 17; docs/controls.md): reset, the clock and
the request log.

Never the cloud's paths: the SDK does not call these; tests do, directly or through sdk_shim/control.py.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt

from emulator import metrics
from emulator.api import validation
from emulator.api.bodies import parse_body
from emulator.clock import CLOCK, MAX_ADVANCE_SECS
from emulator.errors import BadRequest
from emulator.manager.sandboxes import SandboxManager
from emulator.request_log import RequestEntry, RequestLog

router = APIRouter(prefix="/emulator")
metrics_router = APIRouter()


class ResetReport(BaseModel):
    """What a reset removed; ids of sandboxes whose records went, of those that were still live, and so
    on. Keys a reset step of another part adds (manager/reset.py) are kept."""

    model_config = ConfigDict(extra="allow")

    sandboxes: list[str]
    terminated: list[str]
    snapshots: list[str]
    pools: list[str]
    file_systems: list[str]
    images: list[str]  # sandbox images built in the scope (ids)
    faults: list[str]
    errors: list[str]
    seconds: float


class ClockState(BaseModel):
    now_ms: int  # the emulated time, epoch ms
    offset_secs: float  # how far it is ahead of the wall clock
    wall_ms: int


class AdvanceRequest(BaseModel):
    seconds: StrictInt | StrictFloat


class Fired(BaseModel):
    sandbox_id: str
    action: str  # terminate | suspend | pending_timeout


class AdvanceReport(ClockState):
    fired: list[Fired]


def _mgr(request: Request) -> SandboxManager:
    return request.app.state.manager


def _clock_state() -> ClockState:
    now = CLOCK.now_ms()
    return ClockState(now_ms=now, offset_secs=CLOCK.offset_ms / 1000, wall_ms=now - CLOCK.offset_ms)


@router.post("/reset")
async def reset(request: Request) -> JSONResponse:
    """`?namespace=` and/or `?session=` (both: their intersection), or `?all=true` for everything."""
    q = request.query_params
    ns = validation.namespace(q["namespace"]) if "namespace" in q else None
    session = validation.session_label(q.get("session"))
    if ns is None and session is None and q.get("all") not in ("1", "true"):
        raise BadRequest("Say what to reset: ?namespace=<ns>, ?session=<label>, or ?all=true for everything")
    report = await _mgr(request).reset(ns, session)
    return JSONResponse(ResetReport.model_validate(report).model_dump())


@router.get("/clock")
async def get_clock() -> JSONResponse:
    return JSONResponse(_clock_state().model_dump())


@router.post("/clock/advance")
async def advance_clock(request: Request) -> JSONResponse:
    """Body {"seconds": N}: the clock moves forward N s and the deadlines passed act now; the answer
    lists them. A named sandbox's timeout suspend is started here and finishes in the background."""
    body = await parse_body(request, AdvanceRequest, 'clock advance {"seconds": N}')
    seconds = float(body.seconds)
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_ADVANCE_SECS):
        raise BadRequest(f"seconds must be > 0 and at most {MAX_ADVANCE_SECS}; got {body.seconds}")
    fired = await _mgr(request).advance_clock(seconds)
    report = AdvanceReport(**_clock_state().model_dump(),
                           fired=[Fired(sandbox_id=i, action=a) for i, a in fired])
    return JSONResponse(report.model_dump())


# ---- the request log -----------------------------------------------------------------------------

SSE_PING_S = 15.0  # a comment line this often keeps proxies and clients from timing the stream out


def _int_param(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number; got {raw[:40]!r}") from None


def _filters(request: Request) -> dict[str, Any]:
    """The request log's filters from the query: sandbox, method, status, since, after, port, path."""
    q = request.query_params
    port = q.get("port")
    if port not in (None, "api", "proxy"):
        raise BadRequest(f"port must be api or proxy; got {port[:40]!r}")
    after = _int_param(request, "after")
    last_id = request.headers.get("last-event-id")  # an EventSource reconnecting
    if after is None and last_id and last_id.isdigit():
        after = int(last_id)
    return {"sandbox": q.get("sandbox") or None, "method": q.get("method") or None,
            "status": q.get("status") or None, "since": _int_param(request, "since"), "after": after,
            "port": port, "path": q.get("path") or None}


def _log(request: Request) -> RequestLog:
    return request.app.state.request_log


@router.get("/requests")
async def list_requests(request: Request) -> JSONResponse:
    """{"requests": [entry, ...] oldest first, "dropped": n}; `limit` (default 1000) keeps the newest."""
    limit = _int_param(request, "limit", 1000)
    assert limit is not None
    entries = _log(request).query(**_filters(request), limit=max(0, limit))
    return JSONResponse({"requests": [e.model_dump() for e in entries], "dropped": _log(request).dropped})


def _event(entry: RequestEntry) -> str:
    return f"id: {entry.seq}\nevent: request\ndata: {entry.model_dump_json()}\n\n"


@router.get("/requests/stream")
async def stream_requests(request: Request) -> StreamingResponse:
    """Server-sent events: `event: request` with an entry as data, for each new request that matches the
    filters (and first those after `?after=` or Last-Event-ID still in the log). Starts with a
    `: connected` comment, sent once the stream is subscribed."""
    log = _log(request)
    filters = _filters(request)

    async def events() -> AsyncIterator[str]:
        async with log.subscribe() as queue:
            yield ": connected\n\n"
            last = 0
            if filters["after"] is not None:
                for entry in log.query(**filters, limit=log.capacity):
                    last = entry.seq
                    yield _event(entry)
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), SSE_PING_S)
                except asyncio.TimeoutError:
                    yield ": ping\n\n"
                    continue
                if item is None:
                    return  # the emulator is stopping
                if item.seq > last and RequestLog.matches(item, **filters):
                    yield _event(item)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


@metrics_router.get("/metrics")
async def prometheus_metrics() -> Response:
    """Prometheus' text format (emulator/metrics.py lists the series)."""
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)

"""The emulator's own test controls under `/emulator/` (issue 17; docs/controls.md): reset and the clock.

Never the cloud's paths: the SDK does not call these; tests do, directly or through sdk_shim/control.py.
"""

from __future__ import annotations

import json
import math

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, StrictFloat, StrictInt

from emulator.api import validation
from emulator.clock import CLOCK, MAX_ADVANCE_SECS
from emulator.errors import BadRequest
from emulator.manager.sandboxes import SandboxManager

router = APIRouter(prefix="/emulator")


class ResetReport(BaseModel):
    """What a reset removed; ids of sandboxes whose records went, of those that were still live, and so on."""

    sandboxes: list[str]
    terminated: list[str]
    snapshots: list[str]
    pools: list[str]
    file_systems: list[str]
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
    try:
        body = AdvanceRequest.model_validate(json.loads(await request.body() or b"{}"))
    except ValueError as exc:
        raise BadRequest(f'The body must be {{"seconds": N}} with N a number > 0: {str(exc)[:200]}') from None
    seconds = float(body.seconds)
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_ADVANCE_SECS):
        raise BadRequest(f"seconds must be > 0 and at most {MAX_ADVANCE_SECS}; got {body.seconds}")
    fired = await _mgr(request).advance_clock(seconds)
    report = AdvanceReport(**_clock_state().model_dump(),
                           fired=[Fired(sandbox_id=i, action=a) for i, a in fired])
    return JSONResponse(report.model_dump())

"""Lifecycle API routes (docs/protocol.md §4, §6). Parses wire shapes, calls the manager, serialises answers.

The same router is mounted twice: under /v1/namespaces/{namespace} (local mode) and at the root
(flat paths, TENSORLAKE_SANDBOX_API_URL), where the namespace is "default".
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from emulator.api import validation, wire
from emulator.api.bodies import parse_body
from emulator.errors import BadRequest
from emulator.manager.sandboxes import SandboxManager

router = APIRouter()
_TIMES = re.compile(r"[0-9]{1,4}", re.ASCII)


def _mgr(request: Request) -> SandboxManager:
    return request.app.state.manager


def _ns(request: Request) -> str:
    ns = request.path_params.get("namespace")
    return "default" if ns is None else validation.namespace(ns)


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


def _info(request: Request, rec: Any) -> JSONResponse:
    s = request.app.state.settings
    return _json(wire.sandbox_info(rec, s.advertised_proxy_url, rec.runtime or s.runtime))


# How long a suspend or resume call may be held open: the SDK asks for at most 30 s.
MAX_WAIT_MS = 60_000.0
DEFAULT_REQUEST_TIMEOUT_MS = 300_000.0  # the SDK's default request_timeout
LEGACY_WAIT_S = 10.0


def _wait_ms(request: Request) -> float | None:
    """?wait_ms= in seconds, or None when absent. BadRequest unless a finite number >= 0."""
    ms = validation.milliseconds(request.query_params.get("wait_ms"), "wait_ms", default=None, upper=MAX_WAIT_MS)
    return None if ms is None else ms / 1000


def _header_ms(request: Request, header: str) -> float:
    """A millisecond header the SDK sends (docs/protocol.md §3.1); a bad value is a 400, absent the SDK default."""
    ms = validation.milliseconds(request.headers.get(header), header, default=DEFAULT_REQUEST_TIMEOUT_MS,
                                 upper=DEFAULT_REQUEST_TIMEOUT_MS * 10)
    assert ms is not None
    return ms


# ---- sandboxes -----------------------------------------------------------------------------------


@router.post("/sandboxes")
async def create_sandbox(request: Request) -> Response:
    ns = _ns(request)
    req = await parse_body(request, wire.CreateSandboxRequest)
    session = validation.session_label(request.headers.get("x-tle-session"))
    budget = create_budget(request, req.wait)  # a bad header is a 400 before anything is made
    rec = await _mgr(request).create(ns, req.to_spec(session or request.app.state.settings.session_label or None))
    if budget is None and req.wait is not False:
        # A legacy create (no Grace header: SDKs before 0.5.163, and the deprecated SandboxClient.create)
        # answers once the sandbox runs, within LEGACY_WAIT_S: those SDKs connect right after it and need
        # the sandbox_url that only a running sandbox has (docs/protocol.md §6.1, §18). The answer carries
        # the sandbox's real status either way.
        await _mgr(request).wait_started(rec, LEGACY_WAIT_S)
    return await answer_create(request, rec, req.wait, budget)


def create_budget(request: Request, wait: bool | None) -> float | None:
    """Seconds a create or claim may wait for its sandbox (docs/protocol.md §6.1): the client's budget less its
    grace for a blocking call (Grace header), None otherwise. BadRequest for a malformed header."""
    budget_ms = (_header_ms(request, "x-tensorlake-request-timeout-ms")
                 - _header_ms(request, "x-tensorlake-request-timeout-grace-ms"))
    blocking = wait is not False and request.headers.get("x-tensorlake-request-timeout-grace-ms") is not None
    return max(0.0, budget_ms / 1000 - 0.25) if blocking else None


async def answer_create(request: Request, rec: Any, wait: bool | None, budget: float | None) -> JSONResponse:
    """The answer to a create or a pool claim: 202 at once for `wait: false`; a blocking call (`budget`
    seconds) waits for the launch and answers `timeout` or `failed` when it did not start; a legacy
    call answers at once."""
    proxy_url = request.app.state.settings.advertised_proxy_url
    if wait is False:
        return _json(wire.create_response(rec, proxy_url), 202)
    if budget is None:
        return _json(wire.create_response(rec, proxy_url))  # legacy create: answer at once
    await _mgr(request).wait_started(rec, budget)
    if rec.status == "pending":
        return _json(wire.create_response(rec, proxy_url, status="timeout"))
    if rec.status == "terminated":
        return _json(wire.create_response(rec, proxy_url, status="failed"))
    return _json(wire.create_response(rec, proxy_url))


@router.get("/sandboxes")
async def list_sandboxes(request: Request) -> JSONResponse:
    s = request.app.state.settings
    items = [wire.sandbox_info(r, s.advertised_proxy_url, r.runtime or s.runtime).model_dump(mode="json")
             for r in _mgr(request).list_sandboxes(_ns(request))]
    return JSONResponse({"sandboxes": items})


@router.get("/sandboxes/{ident}")
async def get_sandbox(request: Request, ident: str) -> JSONResponse:
    return _info(request, _mgr(request).lookup(_ns(request), ident))


@router.patch("/sandboxes/{ident}")
async def update_sandbox(request: Request, ident: str) -> JSONResponse:
    mgr = _mgr(request)
    rec = mgr.lookup(_ns(request), ident)
    req = await parse_body(request, wire.UpdateSandboxRequest)
    changes = req.model_dump(exclude_unset=True)
    if not changes:
        raise BadRequest("Nothing to update: give at least one of name, exposed_ports, "
                         "allow_unauthenticated_access, auto_resume, network, resources")
    if "resources" in changes and len(changes) > 1:
        raise BadRequest("resources cannot be combined with other fields in one update")
    return _info(request, await mgr.update(rec, changes))


@router.delete("/sandboxes/{ident}")
async def terminate_sandbox(request: Request, ident: str) -> Response:
    mgr = _mgr(request)
    await mgr.terminate(mgr.lookup(_ns(request), ident))
    return Response(status_code=200)


async def _transition(request: Request, ident: str, target: str) -> JSONResponse:
    mgr = _mgr(request)
    rec = mgr.lookup(_ns(request), ident)
    wait = _wait_ms(request)
    done = await (mgr.suspend(rec, wait) if target == "suspended" else mgr.resume(rec, wait))
    return JSONResponse({"sandbox_id": rec.id, "status": str(rec.status)}, status_code=200 if done else 202)


@router.post("/sandboxes/{ident}/suspend")
async def suspend_sandbox(request: Request, ident: str) -> JSONResponse:
    return await _transition(request, ident, "suspended")


@router.post("/sandboxes/{ident}/resume")
async def resume_sandbox(request: Request, ident: str) -> JSONResponse:
    return await _transition(request, ident, "running")


# ---- snapshots -----------------------------------------------------------------------------------


@router.post("/sandboxes/{ident}/snapshot")
async def create_snapshot(request: Request, ident: str) -> JSONResponse:
    mgr = _mgr(request)
    rec = mgr.lookup(_ns(request), ident)
    req = await parse_body(request, wire.SnapshotRequest)
    snap = await mgr.snapshot(rec, req.snapshot_type)
    return _json(wire.CreateSnapshotResponse(snapshot_id=snap.id, status=snap.status))


@router.get("/sandboxes/{ident}/snapshots")
async def list_sandbox_snapshots(request: Request, ident: str) -> JSONResponse:
    mgr = _mgr(request)
    rec = mgr.lookup(_ns(request), ident)
    snaps = mgr.list_snapshots(_ns(request), rec.id)
    return JSONResponse({"snapshots": [wire.snapshot_info(s).model_dump(mode="json") for s in snaps]})


@router.get("/snapshots")
async def list_snapshots(request: Request) -> JSONResponse:
    snaps = _mgr(request).list_snapshots(_ns(request))
    return JSONResponse({"snapshots": [wire.snapshot_info(s).model_dump(mode="json") for s in snaps]})


@router.get("/snapshots/{snapshot_id}")
async def get_snapshot(request: Request, snapshot_id: str) -> JSONResponse:
    return _json(wire.snapshot_info(_mgr(request).get_snapshot(_ns(request), snapshot_id)))


@router.delete("/snapshots/{snapshot_id}")
async def delete_snapshot(request: Request, snapshot_id: str) -> Response:
    await _mgr(request).delete_snapshot(_ns(request), snapshot_id)
    return Response(status_code=200)


@router.post("/sandboxes/{ident}/copy")
async def copy_sandbox(request: Request, ident: str) -> JSONResponse:
    mgr = _mgr(request)
    rec = mgr.lookup(_ns(request), ident)
    raw = request.query_params.get("times", "1")
    if not _TIMES.fullmatch(raw):
        raise BadRequest(f"times must be a whole number from 1; got {raw[:40]!r}")
    times = int(raw)
    budget = _header_ms(request, "x-tensorlake-request-timeout-ms") / 1000
    copies = await mgr.copy(rec, times, timeout=max(1.0, min(budget - 1.0, 120.0)))
    proxy_url = request.app.state.settings.advertised_proxy_url
    return JSONResponse({"source_sandbox_id": rec.id,
                         "sandboxes": [wire.create_response(c, proxy_url).model_dump(mode="json") for c in copies]})


# ---- what has no local equivalent ----------------------------------------------------------------


@router.get("/sandboxes/{ident}/logs")
async def get_logs(request: Request, ident: str) -> JSONResponse:
    _mgr(request).lookup(_ns(request), ident)
    # Process output is served by the proxy (get_stdout/follow_*); no separate log pipeline exists here.
    return JSONResponse({"logs": [], "nextToken": None})


@router.get("/sandboxes/{ident}/processes")
async def list_log_processes(request: Request, ident: str) -> JSONResponse:
    _mgr(request).lookup(_ns(request), ident)
    return JSONResponse({"processes": []})


@router.get("/archived-sandboxes")
async def list_archived(request: Request) -> JSONResponse:
    return JSONResponse({"sandboxes": [], "prev_cursor": None, "next_cursor": None})


@router.post("/sandboxes/{ident}/file_systems")
async def attach_file_system(request: Request, ident: str) -> JSONResponse:
    """Mount a file system into a running sandbox (docs/protocol.md §6.7): FileSystemMount -> SandboxInfo."""
    rec = _mgr(request).lookup(_ns(request), ident)
    req = await parse_body(request, wire.FileSystemMount)
    return _info(request, await _mgr(request).file_systems.attach(rec, req.model_dump(exclude_none=True)))


@router.delete("/sandboxes/{ident}/file_systems")
async def detach_file_system(request: Request, ident: str) -> JSONResponse:
    """Unmount by `{"mount_path"}` (a JSON body on DELETE); the data stays -> SandboxInfo."""
    rec = _mgr(request).lookup(_ns(request), ident)
    req = await parse_body(request, wire.DetachFileSystem)
    return _info(request, await _mgr(request).file_systems.detach(rec, req.mount_path))

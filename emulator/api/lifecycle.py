"""Lifecycle API routes (PROTOCOL.md §4, §6). Parses wire shapes, calls the manager, serialises answers.

The same router is mounted twice: under /v1/namespaces/{namespace} (local mode) and at the root
(flat paths, TENSORLAKE_SANDBOX_API_URL), where the namespace is "default".
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from emulator.api import wire
from emulator.errors import BadRequest, NotSupported
from emulator.manager.sandboxes import SandboxManager

router = APIRouter()
M = TypeVar("M", bound=BaseModel)


def _mgr(request: Request) -> SandboxManager:
    return request.app.state.manager


def _ns(request: Request) -> str:
    return request.path_params.get("namespace") or "default"


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


async def _parse(request: Request, model: type[M]) -> M:
    raw = await request.body()
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise BadRequest(f"Malformed JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise BadRequest(f"Invalid request: {problems}") from exc


def _info(request: Request, rec: Any) -> JSONResponse:
    s = request.app.state.settings
    return _json(wire.sandbox_info(rec, s.advertised_proxy_url, s.runtime))


def _wait_ms(request: Request) -> float | None:
    raw = request.query_params.get("wait_ms")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw)) / 1000
    except ValueError as exc:
        raise BadRequest(f"wait_ms must be a number; got {raw!r}") from exc


# ---- sandboxes -----------------------------------------------------------------------------------


@router.post("/sandboxes")
async def create_sandbox(request: Request) -> Response:
    req = await _parse(request, wire.CreateSandboxRequest)
    mgr = _mgr(request)
    proxy_url = request.app.state.settings.advertised_proxy_url
    res = req.resources
    rec = await mgr.create(
        _ns(request), image=req.image, cpus=res.cpus if res else None, memory_mb=res.memory_mb if res else None,
        disk_mb=res.disk_mb if res else None, timeout_secs=req.timeout_secs, entrypoint=req.entrypoint,
        network=req.network.model_dump() if req.network else None, name=req.name, auto_resume=req.auto_resume,
        exposed_ports=req.exposed_ports, allow_unauthenticated_access=req.allow_unauthenticated_access,
        max_pending_secs=req.max_pending_secs, snapshot_id=req.snapshot_id,
        session_label=request.headers.get("x-tle-session") or request.app.state.settings.session_label or None,
    )
    if req.wait is False:
        return _json(wire.create_response(rec, proxy_url), 202)
    grace = request.headers.get("x-tensorlake-request-timeout-grace-ms")
    if grace is None:
        return _json(wire.create_response(rec, proxy_url))  # legacy create: answer at once
    try:
        budget_ms = float(request.headers.get("x-tensorlake-request-timeout-ms", "300000")) - float(grace)
    except ValueError:
        budget_ms = 30000.0
    await mgr.wait_started(rec, max(0.0, budget_ms / 1000 - 0.25))
    if rec.status == "pending":
        return _json(wire.create_response(rec, proxy_url, status="timeout"))
    if rec.status == "terminated":
        return _json(wire.create_response(rec, proxy_url, status="failed"))
    return _json(wire.create_response(rec, proxy_url))


@router.get("/sandboxes")
async def list_sandboxes(request: Request) -> JSONResponse:
    s = request.app.state.settings
    items = [wire.sandbox_info(r, s.advertised_proxy_url, s.runtime).model_dump(mode="json")
             for r in _mgr(request).list_sandboxes(_ns(request))]
    return JSONResponse({"sandboxes": items})


@router.get("/sandboxes/{ident}")
async def get_sandbox(request: Request, ident: str) -> JSONResponse:
    return _info(request, _mgr(request).lookup(_ns(request), ident))


@router.patch("/sandboxes/{ident}")
async def update_sandbox(request: Request, ident: str) -> JSONResponse:
    mgr = _mgr(request)
    rec = mgr.lookup(_ns(request), ident)
    req = await _parse(request, wire.UpdateSandboxRequest)
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
    task = await (mgr.suspend(rec) if target == "suspended" else mgr.resume(rec))
    if task is not None and wait:
        await asyncio.wait({task}, timeout=wait)
    done = rec.status == target
    if not done and task is not None and task.done():
        # It ended without reaching the target (a failed dump or restore): say why, rather than a
        # 202 that would leave the SDK polling for a state that will not come.
        failure = mgr.transition_error(rec.id)
        if failure:
            raise mgr.checkpoints.transition_failure(rec.id, failure)
    return JSONResponse({"sandbox_id": rec.id, "status": rec.status}, status_code=200 if done else 202)


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
    req = await _parse(request, wire.SnapshotRequest)
    snap = await mgr.snapshot(rec, req.snapshot_type)
    return _json(wire.CreateSnapshotResponse(snapshot_id=snap.id, status=snap.status))


@router.get("/sandboxes/{ident}/snapshots")
async def list_sandbox_snapshots(request: Request, ident: str) -> JSONResponse:
    mgr = _mgr(request)
    rec = mgr.lookup(_ns(request), ident)
    snaps = mgr.checkpoints.list_snapshots(_ns(request), rec.id)
    return JSONResponse({"snapshots": [wire.snapshot_info(s).model_dump(mode="json") for s in snaps]})


@router.get("/snapshots")
async def list_snapshots(request: Request) -> JSONResponse:
    snaps = _mgr(request).checkpoints.list_snapshots(_ns(request))
    return JSONResponse({"snapshots": [wire.snapshot_info(s).model_dump(mode="json") for s in snaps]})


@router.get("/snapshots/{snapshot_id}")
async def get_snapshot(request: Request, snapshot_id: str) -> JSONResponse:
    return _json(wire.snapshot_info(_mgr(request).checkpoints.get_snapshot(_ns(request), snapshot_id)))


@router.delete("/snapshots/{snapshot_id}")
async def delete_snapshot(request: Request, snapshot_id: str) -> Response:
    cp = _mgr(request).checkpoints
    await cp.delete_snapshot(cp.get_snapshot(_ns(request), snapshot_id))
    return Response(status_code=200)


@router.post("/sandboxes/{ident}/copy")
async def copy_sandbox(request: Request, ident: str) -> JSONResponse:
    mgr = _mgr(request)
    rec = mgr.lookup(_ns(request), ident)
    raw = request.query_params.get("times", "1")
    try:
        times = int(raw)
    except ValueError as exc:
        raise BadRequest(f"times must be an integer; got {raw!r}") from exc
    try:
        budget = float(request.headers.get("x-tensorlake-request-timeout-ms", "300000")) / 1000
    except ValueError:
        budget = 300.0
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


@router.api_route("/sandboxes/{ident}/file_systems", methods=["POST", "DELETE"])
async def file_systems(request: Request, ident: str) -> JSONResponse:
    _mgr(request).lookup(_ns(request), ident)
    raise NotSupported("Tensorlake Artifact Storage file systems have no local equivalent in this emulator")


@router.api_route("/sandbox-pools{rest:path}", methods=["GET", "POST", "PUT", "DELETE"])
async def pools(request: Request, rest: str) -> JSONResponse:
    raise NotSupported("Sandbox pools are not supported by this emulator")

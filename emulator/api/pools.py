"""Pool routes (PROTOCOL.md §6.8, §13): create, list, get, PUT, delete, and claim a sandbox.

Mounted with the lifecycle router (namespaced and flat). 404 is PoolNotFoundError and a 409 on
delete PoolInUseError for the SDK; a claim answers like a create (lifecycle.answer_create).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from emulator.api import validation
from emulator.api.bodies import parse_body
from emulator.api.lifecycle import LEGACY_WAIT_S, _json, _mgr, _ns, answer_create, create_budget
from emulator.api.pool_wire import ClaimRequest, CreatePoolResponse, PoolRequest, pool_info

router = APIRouter()


def _session(request: Request) -> str | None:
    return validation.session_label(request.headers.get("x-tle-session")) or \
        request.app.state.settings.session_label or None


@router.post("/sandbox-pools")
async def create_pool(request: Request) -> JSONResponse:
    req = await parse_body(request, PoolRequest)
    pool = await _mgr(request).pools.create(_ns(request), req.to_config(_session(request)))
    return _json(CreatePoolResponse(pool_id=pool.id, namespace=pool.namespace))


@router.get("/sandbox-pools")
async def list_pools(request: Request) -> JSONResponse:
    pools = _mgr(request).pools.list_pools(_ns(request))
    return JSONResponse({"pools": [pool_info(p).model_dump(mode="json") for p in pools]})


@router.get("/sandbox-pools/{pool_id}")
async def get_pool(request: Request, pool_id: str) -> JSONResponse:
    pools = _mgr(request).pools
    pool = pools.lookup(_ns(request), pool_id)
    return _json(pool_info(pool, pools.containers(pool)))


@router.put("/sandbox-pools/{pool_id}")
async def update_pool(request: Request, pool_id: str) -> JSONResponse:
    pools = _mgr(request).pools
    pool = pools.lookup(_ns(request), pool_id)
    req = await parse_body(request, PoolRequest)
    return _json(pool_info(await pools.update(pool, req.to_config(pool.session_label))))


@router.delete("/sandbox-pools/{pool_id}")
async def delete_pool(request: Request, pool_id: str) -> Response:
    pools = _mgr(request).pools
    await pools.delete(pools.lookup(_ns(request), pool_id))
    return Response(status_code=200)


@router.post("/sandbox-pools/{pool_id}/sandboxes")
async def claim(request: Request, pool_id: str) -> JSONResponse:
    pools = _mgr(request).pools
    pool = pools.lookup(_ns(request), pool_id)
    req = await parse_body(request, ClaimRequest)
    session = _session(request)
    fs = _mgr(request).file_systems
    mounts = fs.check_mounts([m.model_dump(exclude_none=True) for m in req.file_systems or []], runtime=pool.runtime)
    budget = create_budget(request, None)
    rec = await pools.claim(pool, session)
    if not mounts:
        return await answer_create(request, rec, None, budget)
    # The mounts go into the claimed (running) sandbox; the SDK requires the answer to say so with
    # `claim_configuration_applied: true`, else it deletes the sandbox (docs/protocol.md §6.8).
    try:
        await _mgr(request).wait_started(rec, budget if budget is not None else LEGACY_WAIT_S)
        for m in mounts:
            await fs.attach(rec, m)
    except Exception:
        await _mgr(request).terminate(rec)  # a claim that could not apply its mounts leaves nothing behind
        raise
    answer = await answer_create(request, rec, None, budget)
    body = json.loads(bytes(answer.body))
    body["claim_configuration_applied"] = True
    return JSONResponse(body, status_code=answer.status_code)

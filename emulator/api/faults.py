"""Fault injection over HTTP under `/emulator/faults` (issue 17; docs/controls.md "Faults").

    POST   /emulator/faults          body: model/faults.py FaultSpec -> 201 the fault (an oom_kill: 200, done)
    GET    /emulator/faults          -> {"faults": [fault, ...]}
    DELETE /emulator/faults/{id}     -> {"deleted": [id]}; 404 NOT_FOUND when unknown
    DELETE /emulator/faults?namespace=&session=  (or ?all=true) -> {"deleted": [ids]}
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from emulator.api import validation
from emulator.api.bodies import parse_body
from emulator.errors import BadRequest
from emulator.manager.faults import FaultControl
from emulator.model.faults import FaultSpec

router = APIRouter(prefix="/emulator/faults")


def _faults(request: Request) -> FaultControl:
    return request.app.state.manager.faults


async def _spec(request: Request) -> FaultSpec:
    if not (await request.body()).strip():
        raise BadRequest('The body must be a JSON object such as {"kind": "create_fail", "namespace": "ns"}')
    spec = await parse_body(request, FaultSpec, "fault")
    if spec.namespace is not None:
        validation.namespace(spec.namespace)
    validation.session_label(spec.session)
    return spec


@router.post("")
async def create_fault(request: Request) -> JSONResponse:
    """Put a fault in force (201). An oom_kill acts at once; its answer (200) lists the killed sandboxes."""
    spec = await _spec(request)
    fault = await _faults(request).inject(spec)
    return JSONResponse(fault.wire(), status_code=200 if spec.kind == "oom_kill" else 201)


@router.get("")
async def list_faults(request: Request) -> JSONResponse:
    return JSONResponse({"faults": [f.wire() for f in _faults(request).all()]})


@router.delete("/{fault_id}")
async def delete_fault(request: Request, fault_id: str) -> JSONResponse:
    return JSONResponse({"deleted": [_faults(request).delete(fault_id).id]})


@router.delete("")
async def delete_faults(request: Request) -> JSONResponse:
    q = request.query_params
    ns = validation.namespace(q["namespace"]) if "namespace" in q else None
    session = validation.session_label(q.get("session"))
    if ns is None and session is None and q.get("all") not in ("1", "true"):
        raise BadRequest("Say which faults to delete: ?namespace=<ns>, ?session=<label>, or ?all=true")
    return JSONResponse({"deleted": _faults(request).delete_scope(ns, session)})

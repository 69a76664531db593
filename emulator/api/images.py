"""The sandbox-image routes (docs/protocol.md, "Sandbox images"): the SDK's CAS image flow under
/images/v4, and the empty legacy template catalog under /platform/v1 the SDK also reads.

Errors here answer `{"message", "code", "error"}`: the SDK's Image Service client prints `message`.
"""

from __future__ import annotations

import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from emulator.api import validation
from emulator.api.bodies import parse_body
from emulator.errors import EmulatorError, NotSupported
from emulator.manager.images import ImageBuildInProgress, ImageService
from emulator.model.images import BuildRecord, ImageRecord

router = APIRouter()
NAMESPACE = "default"  # the image calls carry no namespace; they act on the default one
CONTEXT_PATH = "/images/v4/builds/{build_id}/context"
# How long past now a build may run, reported as operation_deadline_ms (the SDK waits that long).
OPERATION_DEADLINE_MS = 30 * 60 * 1000


class BuilderResources(BaseModel):
    cpus: float = Field(2.0, gt=0, le=64)
    memory_mb: int = Field(4096, ge=64, le=1024 * 1024)


class CreateBuildRequest(BaseModel):
    """POST /images/v4/builds (what the SDK 0.5.163 sends; unknown keys are ignored)."""

    name: str = Field(min_length=1, max_length=255)
    kind: str = "dockerfile"
    dockerfile_path: str = "Dockerfile"
    build_args: dict[str, str] = Field(default_factory=dict)
    builder_resources: BuilderResources = Field(default_factory=lambda: BuilderResources(cpus=2.0, memory_mb=4096))
    disk_mb: int = Field(10240, ge=16, le=1024 * 1024)
    parents: list[Any] = Field(default_factory=list)


class SealRequest(BaseModel):
    digest: str | None = None


def _svc(request: Request) -> ImageService:
    svc: ImageService = request.app.state.images
    return svc


def _error(exc: EmulatorError) -> JSONResponse:
    body: dict[str, Any] = {"message": exc.message, "code": exc.code, "error": exc.message}
    if isinstance(exc, ImageBuildInProgress):
        body.update(image_name=exc.name, active_build_id=exc.build_id)
    return JSONResponse(body, status_code=exc.status)


def _rfc3339(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat().replace("+00:00", "Z")


def image_wire(rec: ImageRecord) -> dict[str, Any]:
    """An image as the Image Service answers it (the SDK turns it into its template shape)."""
    return {"id": rec.id, "name": rec.name, "snapshot_id": rec.docker_id.removeprefix("sha256:"),
            "global": False, "physical_size_bytes": rec.size_bytes,
            "logical_size_bytes": rec.disk_mb * 1024 * 1024,
            "created_at": _rfc3339(rec.created_at), "updated_at": _rfc3339(rec.updated_at)}


def build_wire(svc: ImageService, build: BuildRecord) -> dict[str, Any]:
    """A build as the SDK polls it: status, phase, error, and the image once it succeeded."""
    result = svc.result_of(build)
    return {"build_id": build.build_id, "status": build.status, "kind": build.kind, "name": build.name,
            "phase": build.phase, "attempt_no": build.attempt_no, "client_request_id": build.client_request_id,
            "builder_sandbox_id": build.builder_sandbox_id, "error": build.error,
            "image_id": build.image_id, "result": image_wire(result) if result else None,
            "builder_resources": {"cpus": build.cpus, "memory_mb": build.memory_mb}, "disk_mb": build.disk_mb,
            "operation_deadline_ms": build.created_at + OPERATION_DEADLINE_MS,
            "created_at_ms": build.created_at, "updated_at_ms": build.updated_at}


@router.post("/images/v4/builds")
async def create_build(request: Request) -> Response:
    try:
        req = await parse_body(request, CreateBuildRequest, "build request")
        if req.kind != "dockerfile":
            raise NotSupported(f"{req.kind!r} builds are not supported: the emulator builds Dockerfiles on the "
                               "local engine and reaches no registry to import from")
        if req.parents:
            raise NotSupported("pinned parent images have no local meaning: write FROM <image> instead")
        session = validation.session_label(request.headers.get("x-tle-session"))
        build = _svc(request).create_build(BuildRecord(
            name=req.name.lower(), namespace=NAMESPACE, dockerfile_path=req.dockerfile_path,
            build_args=req.build_args, cpus=req.builder_resources.cpus, memory_mb=req.builder_resources.memory_mb,
            disk_mb=req.disk_mb, client_request_id=request.headers.get("idempotency-key"),
            session_label=session or request.app.state.settings.session_label or None))
    except EmulatorError as exc:
        return _error(exc)
    body = build_wire(_svc(request), build)
    base = str(request.base_url).rstrip("/")
    body["context_upload"] = {"url": base + CONTEXT_PATH.format(build_id=build.build_id), "method": "PUT"}
    return JSONResponse(body, status_code=201)


@router.put(CONTEXT_PATH)
async def upload_context(build_id: str, request: Request) -> Response:
    try:
        size = await _svc(request).write_context(build_id, request.stream())
    except EmulatorError as exc:
        return _error(exc)
    return JSONResponse({"build_id": build_id, "size_bytes": size})


@router.post("/images/v4/builds/{build_id}/context/seal")
async def seal_context(build_id: str, request: Request) -> Response:
    try:
        req = await parse_body(request, SealRequest, "seal request")
        build = await _svc(request).seal(build_id, req.digest)
    except EmulatorError as exc:
        return _error(exc)
    return JSONResponse(build_wire(_svc(request), build))


class CancelRequest(BaseModel):
    build_id: str = Field(min_length=1, max_length=200)


@router.post("/images/v4/builds/cancel")
async def cancel_build(request: Request) -> Response:
    """`{"build_id"}` -> `{"outcome", "build"}` (the SDK's `builds.cancel_build`)."""
    try:
        req = await parse_body(request, CancelRequest, "cancel request")
        outcome = await _svc(request).cancel(req.build_id)
        build = _svc(request).get_build(req.build_id)
    except EmulatorError as exc:
        return _error(exc)
    return JSONResponse({"outcome": outcome, "build": build_wire(_svc(request), build)})


@router.get("/images/v4/builds/{build_id}")
async def get_build(build_id: str, request: Request) -> Response:
    try:
        build = _svc(request).get_build(build_id)
    except EmulatorError as exc:
        return _error(exc)
    return JSONResponse(build_wire(_svc(request), build))


@router.get("/images/v4/builds/{build_id}/logs")
async def build_logs(build_id: str, request: Request) -> Response:
    """The build's log lines so far (the emulator's own route: the SDK follows a builder sandbox)."""
    try:
        build = _svc(request).get_build(build_id)
    except EmulatorError as exc:
        return _error(exc)
    return JSONResponse({"build_id": build_id, "lines": build.log})


@router.get("/images/v4/images")
async def list_images(request: Request) -> Response:
    items = [image_wire(r) for r in _svc(request).in_namespace(NAMESPACE) if r.family == "cas"]
    return JSONResponse({"items": items, "pagination": {"next": None}})


@router.get("/images/v4/images/name/{name:path}")
async def image_by_name(name: str, request: Request) -> Response:
    svc = _svc(request)
    rec = svc.find(NAMESPACE, name.lower(), "cas")
    if rec is None:
        return _error(_not_found(name))
    return JSONResponse(image_wire(rec))


@router.get("/images/v4/images/{image_id}")
async def image_by_id(image_id: str, request: Request) -> Response:
    try:
        rec = _svc(request).lookup(NAMESPACE, image_id)
    except EmulatorError as exc:
        return _error(exc)
    return JSONResponse(image_wire(rec))


@router.delete("/images/v4/images/name/{name:path}")
async def delete_by_name(name: str, request: Request) -> Response:
    svc = _svc(request)
    rec = svc.find(NAMESPACE, name.lower(), "cas")
    if rec is None:
        return _error(_not_found(name))
    await svc.delete(rec)
    return Response(status_code=204)


@router.delete("/images/v4/images/{image_id}")
async def delete_by_id(image_id: str, request: Request) -> Response:
    svc = _svc(request)
    try:
        rec = svc.lookup(NAMESPACE, image_id)
    except EmulatorError as exc:
        return _error(exc)
    await svc.delete(rec)
    return Response(status_code=204)


def _not_found(name: str) -> EmulatorError:
    exc = EmulatorError(f"image '{name}' not found")
    exc.status, exc.code = 404, "not_found"  # type: ignore[misc]
    return exc


def is_context_upload(scope: dict[str, Any]) -> bool:
    """For BodyLimit: a context upload streams to disk under its own limit (TLE_IMAGE_MAX_CONTEXT_BYTES)."""
    path = str(scope.get("path", ""))
    return scope.get("method") == "PUT" and path.startswith("/images/v4/builds/") and path.endswith("/context")

"""The legacy sandbox-image flow of older SDKs (0.5.113; 0.5.163 with `cas=False`) under /platform/v1.

That SDK prepares a build (`POST .../sandbox-template-builds` with the Dockerfile text), creates a
builder sandbox from the image the answer names, uploads the context into it, runs the answer's
builder command there, reads `metadata.json` and completes the build (docs/protocol.md §21). Here the
builder command only writes that metadata (naming its sandbox); the build itself runs on the host
engine when the SDK completes it, from the context read out of the builder sandbox, with its cpus and
memory and the target rootfs size as the disk limit. A failure answers 422 with the build's error
(the SDK's advice included) in `message`.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from emulator.api import validation
from emulator.api.bodies import parse_body
from emulator.api.images import NAMESPACE, _error, _rfc3339, _svc
from emulator.backend.image_build import BuildLimits
from emulator.errors import BadRequest, EmulatorError, NotFound
from emulator.manager.images import ImageService
from emulator.model.images import BuildRecord, ImageRecord

router = APIRouter()
BUILDS = "/platform/v1/sandbox-template-builds"
TEMPLATES = "/platform/v1/sandbox-templates"
BUILD_DIR = "/var/lib/tensorlake/rootfs-builder/build"  # where that SDK puts context, spec and metadata
SNAPSHOT_SCHEME = "tle-build://"
# A Docker repository name (the registered name becomes the image's local tag).
_COMPONENT = r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
_DOCKER_NAME = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?$")
# Run by the SDK as `<command> --spec <spec.json> --metadata-out <metadata.json>`: writes the metadata
# the SDK completes the build with; the snapshot URI names the builder sandbox (its hostname).
_BUILDER_COMMAND = (
    "/bin/sh -c 'echo \"[tensorlake-emulator] the image is built on the host engine when the build "
    "completes\"; disk=$(sed -n \"s/.*\\\"rootfsDiskBytes\\\": *\\([0-9]*\\).*/\\1/p\" \"$2\"); "
    "echo \"{\\\"snapshot_uri\\\":\\\"" + SNAPSHOT_SCHEME + "$(hostname)\\\",\\\"snapshot_format_version\\\":"
    "\\\"docker-image\\\",\\\"snapshot_size_bytes\\\":0,\\\"rootfs_disk_bytes\\\":${disk:-0}}\" > \"$4\"' "
    "tl-rootfs-build")


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class PrepareRequest(_Camel):
    name: str = Field(min_length=1, max_length=255)
    dockerfile: str = Field(min_length=1)
    base_image: str | None = None
    public: bool = False


class CompleteRequest(_Camel):
    snapshot_uri: str
    rootfs_disk_bytes: int = Field(0, ge=0)


def template_wire(rec: ImageRecord) -> dict[str, Any]:
    """An image as the platform's sandbox template (camelCase)."""
    snap = rec.docker_id.removeprefix("sha256:")
    return {"id": rec.id, "name": rec.name, "snapshotId": snap, "snapshotSandboxId": None,
            "snapshotUri": f"docker-image://{rec.docker_ref}", "snapshotFormatVersion": "docker-image",
            "snapshotSizeBytes": rec.size_bytes, "rootfsDiskBytes": rec.disk_mb * 1024 * 1024,
            "rootfsNodeKind": "base", "public": False, "dockerfile": rec.dockerfile,
            "createdAt": _rfc3339(rec.created_at), "updatedAt": _rfc3339(rec.updated_at)}


@router.post(BUILDS)
async def prepare(request: Request) -> Response:
    s = request.app.state.settings
    try:
        req = await parse_body(request, PrepareRequest)
        if not _DOCKER_NAME.match(req.name):
            raise BadRequest(f"image name {req.name!r} is not usable as a local image tag: lowercase letters, "
                             "digits and . _ - / separators")
        build = _svc(request).create_build(BuildRecord(
            name=req.name, namespace=NAMESPACE, family="legacy", dockerfile_text=req.dockerfile,
            session_label=validation.session_label(request.headers.get("x-tle-session"))
            or s.session_label or None))
    except EmulatorError as exc:
        return _error(exc)
    return JSONResponse({
        "buildId": build.build_id, "snapshotId": build.build_id, "snapshotUri": None, "rootfsNodeKind": "base",
        "builder": {"image": s.default_image, "command": _BUILDER_COMMAND, "cpus": 1.0, "memoryMb": 1024,
                    "diskMb": 10240},
        "parent": None, "name": build.name})


@router.post(BUILDS + "/{build_id}/complete")
async def complete(build_id: str, request: Request) -> Response:
    svc: ImageService = _svc(request)
    try:
        req = await parse_body(request, CompleteRequest)
        if not req.snapshot_uri.startswith(SNAPSHOT_SCHEME):
            raise BadRequest(f"snapshotUri {req.snapshot_uri!r} was not written by the emulator's builder command")
        builder = request.app.state.manager.resolve_route(req.snapshot_uri.removeprefix(SNAPSHOT_SCHEME))
        if not builder.container_id:
            raise NotFound("the builder sandbox has no container")
        disk_mb = max(16, req.rootfs_disk_bytes // (1024 * 1024)) if req.rootfs_disk_bytes else 10240
        build = await svc.complete_legacy(build_id, builder.container_id, f"{BUILD_DIR}/context",
                                          BuildLimits(cpus=builder.cpus, memory_mb=builder.memory_mb,
                                                      disk_mb=disk_mb))
    except EmulatorError as exc:
        return _error(exc)
    result = svc.result_of(build)
    if build.status != "succeeded" or result is None:
        return JSONResponse({"message": build.error or "the build failed", "error": build.error, "code": "BUILD_FAILED",
                             "buildId": build_id}, status_code=422)
    return JSONResponse(template_wire(result))


@router.get(TEMPLATES)
async def list_templates(request: Request) -> Response:
    items = [template_wire(r) for r in _svc(request).in_namespace(NAMESPACE) if r.family == "legacy"]
    return JSONResponse({"items": items, "pagination": {"next": None}})


@router.get(TEMPLATES + "/by-name/{name:path}")
async def template_by_name(name: str, request: Request) -> Response:
    rec = _svc(request).find(NAMESPACE, name, "legacy")
    if rec is None:
        return _error(NotFound(f"sandbox template '{name}' not found"))
    return JSONResponse(template_wire(rec))


@router.delete(TEMPLATES + "/{ident:path}")
async def delete_template(ident: str, request: Request) -> Response:
    """`/by-name/<name>` (0.5.163), `/<name>` (0.5.113) or `/<id>`."""
    svc = _svc(request)
    name = ident.removeprefix("by-name/")
    rec = svc.find(NAMESPACE, name, "legacy")
    if rec is None:
        by_id = svc.lookup_id(name)
        rec = by_id if by_id is not None and by_id.family == "legacy" else None
    if rec is None:
        return _error(NotFound(f"sandbox template '{name}' not found"))
    await svc.delete(rec)
    return Response(status_code=204)


@router.delete("/v1/namespaces/{namespace}/sandbox-images/{name:path}")
async def delete_sandbox_image_legacy(namespace: str, name: str, request: Request) -> Response:
    """0.5.113's `delete_sandbox_image`: the image of that name goes; an unknown name is a 204 too, as
    the service answered those SDKs (0.5.163 documents that it raises instead; its own call differs)."""
    svc = _svc(request)
    rec = svc.find(NAMESPACE, name)
    if rec is not None:
        await svc.delete(rec)
    return Response(status_code=204)

"""The dashboard (issue 17; docs/controls.md "Dashboard"): one static page at `/emulator/ui` and the
read-only routes it needs beyond the lifecycle API and the other `/emulator/` routes.

    GET /emulator/ui                                   the page (emulator/ui/index.html; no build step, no CDN)
    GET /emulator/ui/{ui.js,ui.css}                    its script and style
    GET /emulator/inventory                            {"now_ms", "sandboxes": [SandboxInfo], "snapshots":
                                                        [SnapshotInfo], "pools": [PoolInfo]} of every namespace
    GET /emulator/file-systems                         {"file_systems": [{name, project, status, created_at,
                                                        mounted_by}]}
    GET /emulator/sandboxes/{id}/processes             the agent's {"processes": [ProcessInfo]}
    GET /emulator/sandboxes/{id}/processes/{pid}/output  the agent's {"pid", "lines", "line_count"}

The sandbox routes never wake a suspended sandbox (503 SANDBOX_NOT_RUNNING instead).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from emulator.api import wire
from emulator.api.pool_wire import pool_info
from emulator.clock import CLOCK
from emulator.errors import BadRequest, NotFound
from emulator.manager.sandboxes import SandboxManager

router = APIRouter(prefix="/emulator")
UI_DIR = Path(__file__).resolve().parent.parent / "ui"
ASSETS = {"ui.js": "text/javascript", "ui.css": "text/css"}
_PID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The page is only ever framed by itself; scripts and styles come from this origin alone.
_HEADERS = {"cache-control": "no-cache", "x-frame-options": "DENY",
            "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"}


def _mgr(request: Request) -> SandboxManager:
    return request.app.state.manager


@router.get("/ui")
async def page() -> FileResponse:
    return FileResponse(UI_DIR / "index.html", media_type="text/html", headers=_HEADERS)


@router.get("/ui/{asset}")
async def asset(asset: str) -> FileResponse:
    if asset not in ASSETS:
        raise NotFound(f"No dashboard file {asset[:80]!r}")
    return FileResponse(UI_DIR / asset, media_type=ASSETS[asset], headers=_HEADERS)


@router.get("/inventory")
async def inventory(request: Request) -> JSONResponse:
    """Sandboxes (newest first), snapshots and pools of every namespace, in the lifecycle API's shapes."""
    mgr, s = _mgr(request), request.app.state.settings
    sandboxes, snapshots = mgr.inventory()
    sandboxes.sort(key=lambda r: r.created_at, reverse=True)
    return JSONResponse({
        "now_ms": CLOCK.now_ms(),
        "sandboxes": [wire.sandbox_info(r, s.advertised_proxy_url, s.runtime).model_dump(mode="json")
                      for r in sandboxes],
        "snapshots": [wire.snapshot_info(x).model_dump(mode="json") for x in snapshots],
        "pools": [pool_info(p, mgr.pools.containers(p)).model_dump(mode="json") for p in mgr.all_pools()],
    })


@router.get("/file-systems")
async def file_systems(request: Request) -> JSONResponse:
    """Every file system (docs/protocol.md §6.9) with the live sandboxes that mount it:
    {"file_systems": [{"name", "project", "status", "created_at" (epoch ms), "mounted_by": [ids]}]}."""
    fs = _mgr(request).file_systems
    return JSONResponse({"file_systems": [
        {"name": r.name, "project": r.project, "status": r.status, "created_at": r.created_at,
         "mounted_by": fs.users(r.name)} for r in fs.all()]})


@router.get("/sandboxes/{sandbox_id}/processes")
async def processes(request: Request, sandbox_id: str) -> JSONResponse:
    return JSONResponse(await _mgr(request).agent_json(sandbox_id, "/api/v1/processes"))


@router.get("/sandboxes/{sandbox_id}/processes/{pid}/output")
async def output(request: Request, sandbox_id: str, pid: str) -> JSONResponse:
    if not _PID.fullmatch(pid):
        raise BadRequest(f"Invalid process id {pid[:40]!r}")
    return JSONResponse(await _mgr(request).agent_json(sandbox_id, f"/api/v1/processes/{pid}/output"))

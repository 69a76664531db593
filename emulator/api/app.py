"""The lifecycle API application (:8900)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from emulator.api import control, errors, faults, ui
from emulator.api.artifact_storage import router as artifact_router
from emulator.api.image_templates import router as template_router
from emulator.api.images import router as image_router
from emulator.api.lifecycle import router
from emulator.api.pools import router as pool_router
from emulator.config import Settings
from emulator.manager.images import ImageService
from emulator.manager.sandboxes import SandboxManager
from emulator.model import runtimes
from emulator.request_log import RequestLog


def build_api(settings: Settings, manager: SandboxManager, request_log: RequestLog | None = None,
              images: ImageService | None = None) -> FastAPI:
    """The lifecycle API and the emulator's own routes; `request_log` is what /emulator/requests serves;
    `images` serves the sandbox-image routes (api/images.py)."""
    app = FastAPI(title="tensorlake-emulator lifecycle API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.manager = manager
    app.state.images = images
    app.state.request_log = request_log or RequestLog(settings.request_log_size)
    errors.install(app)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"healthy": True})

    @app.get("/emulator/capabilities")
    async def capabilities() -> JSONResponse:
        eng = manager.engine
        return JSONResponse({
            "engine": {"version": eng.version, "runtimes": eng.runtimes} if eng else None,
            "runtime": settings.runtime,
            "runtimes": runtimes.describe(eng.runtimes if eng else [], settings.runtime,
                                          bool(manager.describe_checkpoints().get("memory_snapshots")),
                                          manager.describe_checkpoints().get("gvisor_runtimes") or (),
                                          bool(manager.describe_checkpoints().get("gvisor_host_egress_rules"))),
            "default_image": settings.default_image,
            "checkpoints": manager.describe_checkpoints(),
            "proxy_url": settings.advertised_proxy_url,
        })

    app.include_router(control.router)
    if images is not None:
        app.include_router(image_router)
        app.include_router(template_router)
    app.include_router(control.metrics_router)
    app.include_router(artifact_router)
    app.include_router(faults.router)
    app.include_router(ui.router)
    for r in (router, pool_router):
        app.include_router(r, prefix="/v1/namespaces/{namespace}")
        app.include_router(r)
    return app

"""The lifecycle API application (:8900)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from emulator.api import errors
from emulator.api.lifecycle import router
from emulator.api.pools import router as pool_router
from emulator.config import Settings
from emulator.manager.sandboxes import SandboxManager


def build_api(settings: Settings, manager: SandboxManager) -> FastAPI:
    app = FastAPI(title="tensorlake-emulator lifecycle API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.manager = manager
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
            "default_image": settings.default_image,
            "checkpoints": manager.describe_checkpoints(),
            "proxy_url": settings.advertised_proxy_url,
        })

    for r in (router, pool_router):
        app.include_router(r, prefix="/v1/namespaces/{namespace}")
        app.include_router(r)
    return app

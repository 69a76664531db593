"""The one place where errors become HTTP answers: {"error": message, "code": CODE} (docs/protocol.md §3.2, §13)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from emulator.errors import EmulatorError

log = logging.getLogger(__name__)


def error_body(message: str, code: str) -> dict[str, str]:
    return {"error": message, "code": code}


def json_error_bytes(message: str, code: str) -> bytes:
    return json.dumps(error_body(message, code)).encode()


async def send_asgi_error(scope: dict[str, Any], receive: Any, send: Any, exc: EmulatorError,
                          headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer an ASGI http or websocket request with exc as a JSON error (for the raw-ASGI layers).

    A WebSocket upgrade gets the same status and body through the ASGI denial-response extension
    (uvicorn offers it); a server without it can only close, which the client sees as a 403.
    """
    body = json_error_bytes(exc.message, exc.code)
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            *(headers or [])]
    if scope["type"] == "websocket":
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": exc.code})
            return
        await send({"type": "websocket.http.response.start", "status": exc.status, "headers": head})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": exc.status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI) -> None:
    @app.exception_handler(EmulatorError)
    async def _emulator_error(_: Request, exc: EmulatorError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse(error_body(f"Invalid request: {problems}", "BAD_REQUEST"), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "BAD_REQUEST")
        return JSONResponse(error_body(str(exc.detail), code), status_code=exc.status_code)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        # The client left (or its request was refused mid-body): nobody reads this answer.
        log.info("client went away during %s %s", request.method, request.url.path)
        return JSONResponse(error_body("Client disconnected", "CLIENT_DISCONNECTED"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its traceback here; the client gets a message, never a stack trace.
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(f"Internal error: {type(exc).__name__}: {exc}", "INTERNAL"), status_code=500)

"""A size and time limit on lifecycle API request bodies (issue 9, kind 6).

No lifecycle request needs more than a few kilobytes, so a body over TLE_API_MAX_BODY_BYTES is
answered `413 {"code":"PAYLOAD_TOO_LARGE"}`: at once when Content-Length says so, or as soon as a
chunked body passes the limit. A body that stops arriving is answered 408 after BODY_DEADLINE
seconds rather than holding a handler forever. Both errors are raised from `receive`, so they reach
the one error mapping of api/errors.py like any other EmulatorError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from emulator.api.errors import send_asgi_error
from emulator.errors import PayloadTooLarge, RequestTimeout

BODY_DEADLINE = 30.0  # seconds from the first read to the end of the body


class BodyLimit:
    """ASGI middleware: bodies of http requests are at most max_bytes and arrive within BODY_DEADLINE."""

    def __init__(self, app: Any, max_bytes: int, exempt: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # requests whose handler limits its own (streamed) body: an image build's context upload
        self.exempt = exempt

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (self.exempt is not None and self.exempt(scope)):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            # Answered without reading the body; the connection is closed after it.
            await send_asgi_error(scope, receive, send, self._too_large(), headers=[(b"connection", b"close")])
            return
        await self.app(scope, _LimitedReceive(receive, self.max_bytes, self._too_large), send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"Request body larger than {self.max_bytes} bytes (TLE_API_MAX_BODY_BYTES)")


class _LimitedReceive:
    def __init__(self, receive: Any, max_bytes: int, too_large: Any) -> None:
        self._receive = receive
        self._max = max_bytes
        self._too_large = too_large
        self._seen = 0
        self._done = False
        self._deadline: float | None = None

    async def __call__(self) -> dict[str, Any]:
        if self._done:
            # Past the body, receive only reports a disconnect: it may wait as long as it likes.
            return await self._receive()
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.time() + BODY_DEADLINE
        try:
            msg = await asyncio.wait_for(self._receive(), max(0.0, self._deadline - loop.time()))
        except asyncio.TimeoutError:
            raise RequestTimeout(f"The request body did not arrive within {BODY_DEADLINE:.0f}s") from None
        if msg["type"] != "http.request":
            self._done = True
            return msg
        self._seen += len(msg.get("body", b""))
        if self._seen > self._max:
            raise self._too_large()
        if not msg.get("more_body"):
            self._done = True
        return msg


def _content_length(scope: dict[str, Any]) -> int | None:
    for key, value in scope["headers"]:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # h11 has already refused a malformed one
    return None

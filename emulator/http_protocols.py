"""uvicorn's HTTP and WebSocket protocols with JSON error bodies (issue 9, kind 6).

uvicorn answers what never reaches the app itself: a request h11 cannot parse (400, or 431 for
headers over h11's limit), and WebSocket handshakes that fail or that the app refuses. Its bodies
are plain text; these subclasses give the `{"error", "code"}` JSON every other answer of the
emulator has (docs/protocol.md §3.2). They are passed to uvicorn explicitly (server.py), so the choice
does not depend on whether httptools happens to be installed.

The h11 protocol also answers a request target uvicorn cannot decode (bytes outside ASCII), which
otherwise escapes from uvicorn's parser as an exception and drops the connection with no answer.
"""

from __future__ import annotations

import sys
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers
from websockets.http11 import Response

from emulator.api.errors import json_error_bytes

_CODES = {400: "BAD_REQUEST", 403: "FORBIDDEN", 426: "UPGRADE_REQUIRED", 431: "HEADERS_TOO_LARGE",
          500: "INTERNAL", 501: "NOT_IMPLEMENTED"}


def _code(status: int) -> str:
    return _CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL")


class JsonErrorsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; requests it cannot parse get a JSON error."""

    def handle_events(self) -> None:
        try:
            super().handle_events()
        except UnicodeDecodeError:
            # uvicorn decodes the target as ASCII after h11 accepted it; the request is answered here.
            self.send_400_response("The request target must be ASCII (percent-encode other bytes)")

    def send_400_response(self, msg: str) -> None:
        # Called from uvicorn's `except h11.RemoteProtocolError` block, so the error is still current:
        # its status hint tells a 431 (headers too large) from a 400.
        exc = sys.exc_info()[1]
        status = exc.error_status_hint if isinstance(exc, h11.RemoteProtocolError) else 400
        detail = f"{msg} ({exc})" if isinstance(exc, h11.RemoteProtocolError) else msg
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not cycle.response_complete:
            # The error came in the body of a request the app is already handling: that request is
            # answered here, so the app sees a disconnect and its own answer is dropped, not sent
            # onto a connection h11 has closed (which would be a traceback in the log).
            cycle.disconnected = True
            cycle.message_event.set()
        body = json_error_bytes(detail, _code(status))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers,
                                                             reason=HTTPStatus(status).phrase.encode())) or b"")
            self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
            self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            pass  # a response had already begun on this connection: nothing more can be said on it
        self.transport.close()


class JsonErrorsWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets (sans-I/O) protocol; failed and refused handshakes get a JSON error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain_reject = self.conn.reject

        def json_reject(status: Any, text: str) -> Response:
            # websockets' own handshake checks and uvicorn's 403/500 all come through reject().
            response = plain_reject(status, text)
            body = json_error_bytes(text.strip() or response.reason_phrase, _code(response.status_code))
            headers = Headers([(k, v) for k, v in response.headers.raw_items()
                               if k.lower() not in ("content-type", "content-length")])
            headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(body))
            return Response(response.status_code, response.reason_phrase, headers, body)

        self.conn.reject = json_reject  # type: ignore[method-assign]

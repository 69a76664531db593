"""The sandbox proxy (:9443): routes each data-plane request to its sandbox's agent (docs/protocol.md §1.2).

A raw ASGI app rather than a framework: request and response bodies are streamed chunk by chunk
in both directions, so a 50 MB upload or an endless follow stream never sits in memory.

Framing (issue 9): a request body the client did not finish is never ended as if complete upstream: the
upstream request is aborted, so the agent sees an incomplete body and writes nothing. An agent answer cut
in the middle is cut for the client too. A 503 (which the SDK retries) is only answered when the request
provably never left the proxy; once it may have reached the agent, a failure is a 500
``SANDBOX_CONNECTION_LOST``, which the SDK does not retry, so nothing runs twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from emulator.agent_channel import AgentEndpoint
from emulator.agent_client import AgentClients
from emulator.errors import EmulatorError, MissingSandboxId, SandboxNotReady
from emulator.manager.sandboxes import SandboxManager
from emulator.proxy.websocket import serve_websocket

log = logging.getLogger(__name__)
_HOP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te", b"trailer",
        b"proxy-connection"}
_RESP_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"}


def routing_value(headers: dict[bytes, bytes]) -> str:
    explicit = headers.get(b"x-tensorlake-sandbox-id")
    if explicit:
        return explicit.decode("latin-1").strip()
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    host = host.rsplit(":", 1)[0] if ":" in host and not host.endswith("]") else host
    if host.endswith(".local") and len(host) > len(".local"):
        return host[: -len(".local")]
    raise MissingSandboxId("Missing x-tensorlake-sandbox-id header")


class ProxyApp:
    def __init__(self, manager: SandboxManager, agents: AgentClients) -> None:
        self.manager = manager
        self.agents = agents

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            # PTY sessions and TCP tunnels (§9, §10): relayed into the agent, see proxy/websocket.py.
            await serve_websocket(scope, receive, send, self._resolve, self.agents, self.manager.agent_unreachable)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        try:
            sandbox_id, sock = await self._resolve(headers)
        except MissingSandboxId as exc:
            # The usual cause is an SDK aimed at this port instead of the lifecycle API: say which URL to use.
            await _send_error(send, exc.status, f"{exc.message}: {self._wrong_port_hint()}", exc.code)
            return
        except EmulatorError as exc:
            await _send_error(send, exc.status, exc.message, exc.code)
            return
        fault = self.manager.faults.for_proxy(sandbox_id, scope["method"], scope["path"])
        if fault is not None and fault.kind == "proxy_error":
            # As a gateway in front of the sandbox answers: nothing reached the agent (what makes the
            # SDK's retry of 502/503/504 safe), the body is read and dropped.
            with contextlib.suppress(ClientGone):
                async for _ in _request_body(receive):
                    pass
            code, text = _GATEWAY_ERRORS[fault.status]
            await _send_error(send, fault.status, fault.message or text, code)
            return
        await self._forward(scope, receive, send, headers, sandbox_id, sock,
                            cut_after=fault.after_bytes if fault is not None else None)

    def _wrong_port_hint(self) -> str:
        settings = self.manager.settings
        host = "localhost" if settings.bind in ("127.0.0.1", "0.0.0.0") else settings.bind
        return (f"port {settings.proxy_port} is the emulator's sandbox proxy; point the SDK "
                f"(TENSORLAKE_API_URL or api_url=) at the lifecycle API, http://{host}:{settings.api_port}")

    async def _resolve(self, headers: dict[bytes, bytes]) -> tuple[str, AgentEndpoint]:
        """The sandbox a request is for (§1.2), woken first when it allows; raises EmulatorError."""
        rec, sock = await self.manager.ready_for_traffic(routing_value(headers))
        return rec.id, sock

    async def _forward(self, scope: dict[str, Any], receive: Any, send: Any, headers: dict[bytes, bytes],
                       sandbox_id: str, sock: Any, cut_after: int | None = None) -> None:
        """Relay one request; `cut_after` (an injected proxy_cut): end the connection after that many
        bytes of the answer's body, as a network cut would."""
        client = self.agents.get(sandbox_id, sock)
        path = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            path += b"?" + scope["query_string"]
        fwd = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]
        has_body = b"content-length" in headers or b"transfer-encoding" in headers
        request = client.build_request(
            scope["method"], path.decode("latin-1"), headers=fwd,
            content=_request_body(receive) if has_body else None,
        )
        try:
            try:
                response = await client.send(request, stream=True)
            except RuntimeError as exc:
                if client.is_closed:  # the pool was closed for a suspend meanwhile: nothing was sent
                    raise _ClientClosed(str(exc)) from exc
                raise
        except ClientGone:
            # The client's body was cut: the upstream request was aborted (its connection closed before
            # the body's end), so the agent saw an incomplete body and acted on nothing. Nobody to answer.
            log.info("client of %s left in the middle of its request body", sandbox_id)
            return
        except (*_NOTHING_SENT, _ClientClosed) as exc:
            log.info("agent of %s unreachable: %s", sandbox_id, exc)
            err = (await self.manager.agent_unreachable(sandbox_id, type(exc).__name__)
                   or SandboxNotReady(f"Sandbox {sandbox_id} is not answering yet: {type(exc).__name__}"))
            await _send_error(send, err.status, err.message, err.code)
            return
        except httpx.HTTPError as exc:
            # The request may have reached the agent and been carried out: answer a status the SDK does
            # not retry (PROTOCOL.md 3.3), so nothing runs twice.
            log.warning("request to the agent of %s failed after it was sent: %r", sandbox_id, exc)
            await _send_error(send, 500, f"The connection to sandbox {sandbox_id} broke before its answer "
                              f"({type(exc).__name__}); the request may have been carried out",
                              "SANDBOX_CONNECTION_LOST")
            return
        started = False
        try:
            out_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.multi_items()
                           if k.lower() not in _RESP_HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out_headers})
            started = True
            sent = 0
            async for chunk in response.aiter_raw():
                if cut_after is not None and sent + len(chunk) >= cut_after:
                    if cut_after > sent:
                        await send({"type": "http.response.body", "body": chunk[: cut_after - sent],
                                    "more_body": True})
                    log.info("fault: answer of %s cut after %d bytes", sandbox_id, cut_after)
                    return  # the response is left unfinished: the server drops the connection
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (httpx.HTTPError, OSError) as exc:
            log.info("stream from %s broke: %s", sandbox_id, exc)
            if started and self._suspending(sandbox_id):
                # Cut by a suspend: end the response cleanly. A cut one makes the SDK reconnect, and
                # that traffic would auto-resume the sandbox the user has just suspended. The output
                # stays in the agent; following again after the resume replays all of it.
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            # Otherwise the response is cut, so the client sees it end early.
        finally:
            await response.aclose()

    def _suspending(self, sandbox_id: str) -> bool:
        try:
            return self.manager.resolve_route(sandbox_id).status in ("suspending", "suspended")
        except EmulatorError:
            return False


# Failures where the request provably never left the proxy: a 503 there means "nothing happened", which is
# what makes the SDK's retry safe.
_NOTHING_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


# Injected proxy errors (manager/faults.py): the code and message a gateway would answer.
_GATEWAY_ERRORS = {
    429: ("TOO_MANY_REQUESTS", "Too many requests"),
    500: ("INTERNAL", "Internal error"),
    502: ("BAD_GATEWAY", "Bad gateway: the sandbox did not answer the proxy"),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable"),
    504: ("GATEWAY_TIMEOUT", "Gateway timeout: the sandbox did not answer in time"),
}


class _ClientClosed(Exception):
    """The sandbox's connection pool was closed (before a CRIU dump) between routing and sending."""


class ClientGone(Exception):
    """The client disconnected before the end of its request body."""


async def _request_body(receive: Any) -> AsyncIterator[bytes]:
    """The client's body, chunk by chunk. A body the client did not finish raises ClientGone rather than
    ending: ending would make httpx close the upstream body as complete (a final chunk, or a short
    Content-Length body), and the agent would act on the truncated part."""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        body = msg.get("body", b"")
        if body:
            yield body
        if not msg.get("more_body"):
            return


async def _send_error(send: Any, status: int, message: str, code: str) -> None:
    body = json.dumps({"error": message, "code": code}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

"""WebSocket upgrades of the sandbox proxy: PTY sessions and TCP tunnels (docs/protocol.md §9, §10).

The proxy holds no PTY or tunnel logic. It accepts the SDK's WebSocket and opens an upgraded
connection to the sandbox's agent on its unix socket (`Connection: Upgrade`, `Upgrade: tle-frames`,
same path, query and headers as the SDK sent). The agent validates and answers: `101` and then frames,
or an error status with a JSON body, which becomes the WebSocket's rejection with that status.

After the `101`, each frame is 1 byte kind + 4 bytes big-endian length + payload, and maps 1:1 to a
WebSocket message: binary, text, or close (u16 code + UTF-8 reason). So the in-sandbox TCP connection
of a tunnel is made by the agent, from inside the sandbox: no traffic ever goes to a container address.

The upgraded connection is made with the same httpx client as the HTTP traffic (httpcore hands over
the socket as the response's `network_stream`), so `AgentClients.close()` cuts it too: before a CRIU
dump the manager closes every connection into the agent, WebSockets included (the client sees close
1011; PTY sessions live on in the agent and can be attached again after the resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpcore
import httpx

from emulator.agent_channel import AgentEndpoint
from emulator.agent_client import AgentClients
from emulator.errors import EmulatorError, SandboxNotReady
from emulator.proxy.frame_protocol import FRAME_BINARY, FRAME_CLOSE, FRAME_HEAD, FRAME_TEXT, MAX_FRAME, UPGRADE_PROTOCOL

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
MAX_ERROR_BODY = 64 * 1024
# The SDK does not retry a refused upgrade, so a sandbox that is waking up is waited for here
# (its PTY and tunnel clients give up after 10 s by default).
NOT_READY_WAIT = 8.0
# Headers of the SDK's upgrade that are about the client's own connection, not for the agent.
_SKIP = {b"host", b"connection", b"upgrade", b"keep-alive", b"te", b"trailer", b"transfer-encoding",
         b"content-length", b"proxy-connection", b"origin"}

Resolver = Callable[[dict[bytes, bytes]], Awaitable[tuple[str, AgentEndpoint]]]
# (sandbox id, cause) -> the error to answer when the sandbox has died, else None
Unreachable = Callable[[str, str], Awaitable[EmulatorError | None]]


async def serve_websocket(scope: dict[str, Any], receive: Any, send: Any, resolve: Resolver,
                          agents: AgentClients, unreachable: Unreachable) -> None:
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return
    headers = {k.lower(): v for k, v in scope["headers"]}
    deadline = time.monotonic() + NOT_READY_WAIT
    while True:
        try:
            sandbox_id, sock = await resolve(headers)
            break
        except SandboxNotReady as exc:
            if time.monotonic() >= deadline:
                await _deny(send, exc.status, _error_body(exc.message, exc.code))
                return
            await asyncio.sleep(0.25)
        except EmulatorError as exc:
            await _deny(send, exc.status, _error_body(exc.message, exc.code))
            return

    client = agents.get(sandbox_id, sock)
    path = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        path += b"?" + scope["query_string"]
    fwd = [(k, v) for k, v in scope["headers"]
           if k.lower() not in _SKIP and not k.lower().startswith(b"sec-websocket-")]
    fwd += [(b"connection", b"Upgrade"), (b"upgrade", UPGRADE_PROTOCOL.encode())]
    request = client.build_request("GET", path.decode("latin-1"), headers=fwd,
                                   timeout=httpx.Timeout(connect=5.0, read=30.0, write=5.0, pool=10.0))
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        log.info("agent of %s unreachable for a websocket: %s", sandbox_id, exc)
        err = (await unreachable(sandbox_id, type(exc).__name__)
               or SandboxNotReady(f"Sandbox {sandbox_id} is not answering yet: {type(exc).__name__}"))
        await _deny(send, err.status, _error_body(err.message, err.code))
        return
    try:
        if response.status_code != 101:
            body = await _read_capped(response)
            await _deny(send, response.status_code, body,
                        response.headers.get("content-type", "application/json"))
            return
        stream = response.extensions["network_stream"]
        try:
            await send({"type": "websocket.accept"})
        except OSError:
            return  # the client left during the handshake
        await _relay(receive, send, stream)
    finally:
        await response.aclose()


async def _relay(receive: Any, send: Any, stream: Any) -> None:
    to_agent = asyncio.ensure_future(_client_to_agent(receive, stream))
    to_client = asyncio.ensure_future(_agent_to_client(send, stream))
    try:
        await asyncio.wait({to_agent, to_client}, return_when=asyncio.FIRST_COMPLETED)
        if to_agent.done() and not to_client.done() and not to_agent.result():
            # Writing into the agent failed: its side is going away too; let the client get its close frame.
            await asyncio.wait({to_client}, timeout=2.0)
    finally:
        for task in (to_agent, to_client):
            task.cancel()
        for task in (to_agent, to_client):
            with contextlib.suppress(BaseException):
                await task


async def _client_to_agent(receive: Any, stream: Any) -> bool:
    """Client messages into the agent; True when the client left, False when the agent's side broke."""
    try:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.receive":
                if msg.get("bytes") is not None:
                    await stream.write(FRAME_HEAD.pack(FRAME_BINARY, len(msg["bytes"])) + msg["bytes"])
                elif msg.get("text") is not None:
                    data = msg["text"].encode("utf-8")
                    await stream.write(FRAME_HEAD.pack(FRAME_TEXT, len(data)) + data)
            elif msg["type"] == "websocket.disconnect":
                reason = (msg.get("reason") or "").encode("utf-8")
                payload = struct.pack(">H", msg.get("code") or 1005) + reason
                with contextlib.suppress(httpcore.NetworkError, httpcore.TimeoutException, OSError):
                    await stream.write(FRAME_HEAD.pack(FRAME_CLOSE, len(payload)) + payload)
                return True
    except (httpcore.NetworkError, httpcore.TimeoutException, OSError) as exc:
        log.info("websocket stream into the agent broke: %r", exc)
        return False


async def _agent_to_client(send: Any, stream: Any) -> None:
    buf = bytearray()
    try:
        while True:
            while len(buf) >= FRAME_HEAD.size:
                kind, n = FRAME_HEAD.unpack_from(buf)
                if n > MAX_FRAME:
                    raise ValueError(f"frame of {n} bytes from the agent")
                if len(buf) < FRAME_HEAD.size + n:
                    break
                payload = bytes(buf[FRAME_HEAD.size:FRAME_HEAD.size + n])
                del buf[:FRAME_HEAD.size + n]
                if kind == FRAME_BINARY:
                    await send({"type": "websocket.send", "bytes": payload})
                elif kind == FRAME_TEXT:
                    await send({"type": "websocket.send", "text": payload.decode("utf-8", "replace")})
                elif kind == FRAME_CLOSE:
                    code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1000
                    await send({"type": "websocket.close", "code": code,
                                "reason": payload[2:].decode("utf-8", "replace")})
                    return
            data = await stream.read(READ_CHUNK)
            if not data:
                break
            buf += data
    except (httpcore.NetworkError, httpcore.TimeoutException, OSError, ValueError) as exc:
        log.info("websocket stream from the agent broke: %r", exc)
    # The agent's side ended without a close frame (agent stopped, or connections cut for a dump).
    with contextlib.suppress(Exception):
        await send({"type": "websocket.close", "code": 1011, "reason": "sandbox connection lost"})


async def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) >= MAX_ERROR_BODY:
                break
    return bytes(body[:MAX_ERROR_BODY])


def _error_body(message: str, code: str) -> bytes:
    return json.dumps({"error": message, "code": code}).encode()


async def _deny(send: Any, status: int, body: bytes, content_type: str = "application/json") -> None:
    """Refuse the upgrade with an HTTP answer (ASGI websocket denial response)."""
    with contextlib.suppress(OSError):
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode("latin-1")),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})

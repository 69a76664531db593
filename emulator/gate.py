"""The gate in front of both ports (issue 9, kind 7): Host and Origin checks and the optional token.

Host and Origin: a web page cannot drive the emulator through DNS rebinding (a name of the
attacker's that resolves to 127.0.0.1), because every request must name the emulator by one of its
own names: localhost, 127.0.0.1, ::1, the bind address, TLE_PROXY_URL's host and TLE_ALLOWED_HOSTS
(any port). The proxy also accepts `Host: <sandbox id or name>.local` with no port, which is what the
SDK sends to a localhost proxy (docs/protocol.md §1.2) and what a browser never sends for a non-default
port. An Origin header, which browsers add to cross-site and WebSocket requests, must name one of
the same hosts. Refusals are `403 {"code":"HOST_NOT_ALLOWED"}`. TLE_ALLOWED_HOSTS=* turns both off.

Token: with TLE_API_KEY set, every request on both ports, WebSocket upgrades included, must carry
`Authorization: Bearer <key>`, as the SDK sends TENSORLAKE_API_KEY to the cloud (docs/protocol.md §2, for
lifecycle, proxy, PTY and tunnel upgrades and PTY DELETE alike). Otherwise `401
{"code":"UNAUTHORIZED"}`, which the SDK raises as RemoteAPIError(401). `GET /healthz` of the API
stays open, for health checks that hold no key.

The gate also turns an exception that escapes the app before it answered into a JSON 500, so that
no error of either port is uvicorn's plain-text one.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from emulator.api.errors import send_asgi_error
from emulator.config import Settings
from emulator.errors import EmulatorError, HostNotAllowed, Unauthorized

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARD_BINDS = {"", "0.0.0.0", "::"}
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
# `<label>.local` exactly as the SDK sends it: one label (an id or a name), no port.
_LOCAL_ROUTE = re.compile(r"[A-Za-z0-9_-]{1,63}\.local", re.ASCII | re.IGNORECASE)
_BEARER = re.compile(r"bearer +(.+)", re.IGNORECASE | re.ASCII)
_UNAUTHORIZED_HEADERS = [(b"www-authenticate", b'Bearer realm="tensorlake-emulator"')]


def host_name(authority: str) -> str | None:
    """The host of a Host header or an Origin's authority: lower case, without port, brackets or final dot.

    None when it is not `host[:port]` or `[ipv6][:port]`.
    """
    value = authority.strip().lower()
    if value.startswith("["):
        name, bracket, port = value[1:].partition("]")
        if not bracket or (port and not (port[0] == ":" and _PORT.fullmatch(port[1:]))):
            return None
    else:
        name, colon, port = value.partition(":")
        if colon and not _PORT.fullmatch(port):
            return None
    name = name.rstrip(".")
    return name or None


@dataclass(frozen=True)
class GatePolicy:
    names: frozenset[str]  # host names accepted in Host and Origin
    any_host: bool  # TLE_ALLOWED_HOSTS=*: no Host or Origin check
    local_routing: bool  # the proxy: `Host: <sandbox>.local` too
    token: bytes | None  # TLE_API_KEY
    open_paths: frozenset[str]  # answered without the token

    @classmethod
    def for_port(cls, settings: Settings, *, proxy: bool) -> GatePolicy:
        """The policy of the API port (proxy=False) or the proxy port, from TLE_* settings."""
        names = set(LOOPBACK_NAMES)
        bind = host_name(settings.bind) or ""
        if bind not in _WILDCARD_BINDS:
            names.add(bind)
        advertised = urlsplit(settings.advertised_proxy_url).hostname
        if advertised:
            names.add(advertised.lower().rstrip("."))
        extra = settings.extra_hosts
        names.update(h for h in extra if h != "*")
        return cls(names=frozenset(names), any_host="*" in extra, local_routing=proxy,
                   token=settings.api_key.strip().encode() if settings.api_key.strip() else None,
                   open_paths=frozenset() if proxy else frozenset({"/healthz"}))

    def check(self, scope: dict[str, Any]) -> None:
        """Raises HostNotAllowed or Unauthorized unless the request may pass."""
        hosts: list[str] = []
        origins: list[str] = []
        auths: list[str] = []
        for key, value in scope["headers"]:
            key = key.lower()
            if key == b"host":
                hosts.append(value.decode("latin-1"))
            elif key == b"origin":
                origins.append(value.decode("latin-1"))
            elif key == b"authorization":
                auths.append(value.decode("latin-1"))
        if not self.any_host:
            if not hosts:
                raise HostNotAllowed("A Host header is required")
            for host in hosts:  # 0.5.113's sync PTY client sent two (docs/protocol.md §9)
                self._check_host(host)
            for origin in origins:
                self._check_origin(origin)
        if self.token is not None and scope.get("path") not in self.open_paths:
            self._check_token(auths)

    def _check_host(self, host: str) -> None:
        if self.local_routing and _LOCAL_ROUTE.fullmatch(host.strip()):
            return
        if host_name(host) not in self.names:
            raise HostNotAllowed(f"Host {host[:100]!r} is not a name of this emulator; add it to "
                                 "TLE_ALLOWED_HOSTS to reach the emulator by that name")

    def _check_origin(self, origin: str) -> None:
        parts = urlsplit(origin.strip()) if origin.strip() != "null" else None
        name = host_name(parts.netloc) if parts and parts.scheme in ("http", "https") else None
        if name not in self.names:
            raise HostNotAllowed(f"Origin {origin[:100]!r} is not a local page; requests from other sites "
                                 "are refused (TLE_ALLOWED_HOSTS lists more names)")

    def _check_token(self, auths: list[str]) -> None:
        match = _BEARER.fullmatch(auths[0].strip()) if len(auths) == 1 else None
        given = match.group(1).strip().encode("latin-1") if match else b""
        assert self.token is not None
        if not (match and hmac.compare_digest(given, self.token)):
            what = "a wrong API key" if match else "no API key"
            raise Unauthorized(f"This emulator requires an API key and the request carried {what}: send "
                               "`Authorization: Bearer <key>` (set TENSORLAKE_API_KEY to the emulator's TLE_API_KEY)")


class Gate:
    """ASGI middleware applying a GatePolicy to every http and websocket request."""

    def __init__(self, app: Any, policy: GatePolicy, label: str) -> None:
        self.app = app
        self.policy = policy
        self.label = label

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            self.policy.check(scope)
        except EmulatorError as exc:
            log.info("%s refused %s %s from %s: %s", self.label, scope.get("method", "WEBSOCKET"),
                     scope.get("path"), (scope.get("client") or ("?",))[0], exc.code)
            extra = _UNAUTHORIZED_HEADERS if isinstance(exc, Unauthorized) else []
            await send_asgi_error(scope, receive, send, exc, headers=extra)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        await self._guarded(scope, receive, send)

    async def _guarded(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise  # too late for an answer: uvicorn cuts the response, as it must
            log.exception("%s: unexpected error on %s %s", self.label, scope.get("method"), scope.get("path"))
            exc = EmulatorError("Internal error while handling the request (see the emulator's log)")
            await send_asgi_error(scope, receive, send, exc)

"""Connections from the host to each sandbox's agent, over its verified unix socket channel.

Shared by the manager (readiness checks, closing connections before a CRIU dump) and the proxy
(forwarding the data plane). One connection pool per sandbox; every new connection goes through
`agent_channel.VerifiedAgentBackend`, so a link or a foreign socket in the sandbox's folder is never
followed.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import httpcore
import httpx

from emulator.agent_channel import AGENT_SOCKET_NAME, AgentEndpoint, AgentPids, PidLookup, VerifiedAgentBackend

# Streams (follow, run, big files) have no total limit; only connecting is bounded.
_TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=None, pool=10.0)
ALIVE_EVERY = 0.25  # seconds between checks that a starting agent's container still runs
# Reads from an agent of 1 MiB rather than httpcore's 64 KiB: a big download then crosses the proxy in
# 16x fewer chunks, each one a pass through httpcore, the ASGI send and h11 (the per-chunk cost dominates).
httpcore._async.http11.AsyncHTTP11Connection.READ_NUM_BYTES = 1 << 20
# A unix stream socket's capacity is its sender's SO_SNDBUF (212992 bytes by default): 4 MiB lets an upload's
# 256 KiB-1 MiB pieces go to the agent in one send each instead of a few partial sends and wake-ups
# (the kernel caps it at net.core.wmem_max).
_SOCKET_OPTIONS = [(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)]
_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=16)


class AgentClients:
    """Pools of HTTP connections to agents, keyed by sandbox id.

    `pid_lookup(container_id)` gives the host pid of a container's PID 1 (the engine's inspect); the
    channel accepts only a listener with that pid.
    """

    def __init__(self, pid_lookup: PidLookup) -> None:
        self._clients: dict[str, tuple[AgentEndpoint, httpx.AsyncClient]] = {}
        self._pids = AgentPids(pid_lookup)

    def get(self, sandbox_id: str, endpoint: AgentEndpoint) -> httpx.AsyncClient:
        entry = self._clients.get(sandbox_id)
        if entry is not None and entry[0] == endpoint:
            return entry[1]
        if entry is not None:
            asyncio.get_running_loop().create_task(entry[1].aclose())
        # verify=False: no TLS on a unix socket, and the transport's pool is replaced below; the default
        # would load the CA bundle, 20-50 ms for every new pool (each create, resume and restore).
        transport = httpx.AsyncHTTPTransport(uds=str(endpoint.run_dir / AGENT_SOCKET_NAME), limits=_LIMITS,
                                             verify=False)
        # httpx takes no network backend; its pool is replaced by the same pool with the verified one.
        transport._pool = httpcore.AsyncConnectionPool(
            max_connections=_LIMITS.max_connections,
            max_keepalive_connections=_LIMITS.max_keepalive_connections,
            keepalive_expiry=_LIMITS.keepalive_expiry,
            uds=str(endpoint.run_dir / AGENT_SOCKET_NAME),
            socket_options=_SOCKET_OPTIONS,
            network_backend=VerifiedAgentBackend(endpoint, self._pids),
        )
        client = httpx.AsyncClient(transport=transport, base_url="http://sandbox-agent", timeout=_TIMEOUT)
        self._clients[sandbox_id] = (endpoint, client)
        return client

    async def close(self, sandbox_id: str) -> None:
        entry = self._clients.pop(sandbox_id, None)
        if entry is not None:
            self._pids.forget(entry[0].container_id)
            await entry[1].aclose()

    async def close_all(self) -> None:
        for sid in list(self._clients):
            await self.close(sid)

    async def healthy(self, endpoint: AgentEndpoint) -> bool:
        try:
            r = await self.get(endpoint.sandbox_id, endpoint).get("/api/v1/health", timeout=2.0)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    async def wait_healthy(self, endpoint: AgentEndpoint, timeout: float,
                           alive: Callable[[], Awaitable[bool]] | None = None) -> bool:
        """Poll the agent's health until it answers 200 (True), `timeout` seconds pass, or `alive()`
        (asked every ALIVE_EVERY seconds) says the agent is gone (both False: an agent that exited at start
        is reported at once, not after the whole start-up timeout)."""
        started = time.monotonic()
        deadline = started + timeout
        next_alive = started + ALIVE_EVERY
        # Short, capped steps: a poll costs one failed open() until the agent binds, and a long step
        # would add its length to every create (the agent binds 60-100 ms after the container starts).
        delay = 0.005
        while time.monotonic() < deadline:
            if await self.healthy(endpoint):
                return True
            if alive is not None and time.monotonic() >= next_alive:
                if not await alive():
                    return await self.healthy(endpoint)  # it may have answered just before exiting
                next_alive = time.monotonic() + ALIVE_EVERY
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.01 if time.monotonic() - started < 2 else 0.2)
        return False

"""Connections from the host to each sandbox's agent, over the unix socket in its host folder.

Shared by the manager (readiness checks, closing connections before a CRIU dump) and the proxy
(forwarding the data plane). One connection pool per sandbox.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

# Streams (follow, run, big files) have no total limit; only connecting is bounded.
_TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=None, pool=10.0)


class AgentClients:
    def __init__(self) -> None:
        self._clients: dict[str, tuple[Path, httpx.AsyncClient]] = {}

    def get(self, sandbox_id: str, socket_path: Path) -> httpx.AsyncClient:
        entry = self._clients.get(sandbox_id)
        if entry is not None and entry[0] == socket_path:
            return entry[1]
        if entry is not None:
            asyncio.get_running_loop().create_task(entry[1].aclose())
        client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
            base_url="http://sandbox-agent",
            timeout=_TIMEOUT,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=16),
        )
        self._clients[sandbox_id] = (socket_path, client)
        return client

    async def close(self, sandbox_id: str) -> None:
        entry = self._clients.pop(sandbox_id, None)
        if entry is not None:
            await entry[1].aclose()

    async def close_all(self) -> None:
        for sid in list(self._clients):
            await self.close(sid)

    async def healthy(self, sandbox_id: str, socket_path: Path) -> bool:
        try:
            r = await self.get(sandbox_id, socket_path).get("/api/v1/health", timeout=2.0)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    async def wait_healthy(self, sandbox_id: str, socket_path: Path, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while time.monotonic() < deadline:
            if await self.healthy(sandbox_id, socket_path):
                return True
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.2)
        return False

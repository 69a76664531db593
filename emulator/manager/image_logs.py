"""Live build logs for the SDK: a builder sandbox whose `tl-image-builder` process prints the build log.

The SDK follows a CAS build's log the way the service offers it: while the build is `running` with a
`builder_sandbox_id`, it lists that sandbox's processes, takes the one whose command is named
`tl-image-builder` and follows its output (docs/protocol.md §21). The build itself runs on the host
engine; this mirror is a small sandbox of the default image where `/tmp/tl-image-builder` (a link to
`cat`) runs with a stdin pipe, and every log line of the build is written to that pipe. Closing the
pipe at the end ends the process and so the SDK's follow; the sandbox is terminated a little later.
A mirror that cannot start costs only the live log (the failure still carries the log's tail).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import httpx

from emulator.agent_client import AgentClients
from emulator.errors import EmulatorError
from emulator.model.spec import SandboxSpec

if TYPE_CHECKING:
    from emulator.manager.sandboxes import SandboxManager

log = logging.getLogger("emulator.images")

BUILDER_COMMAND = "/tmp/tl-image-builder"  # the SDK matches the command's file name
LINGER_SECS = 10.0  # the SDK drains a follower for 2 s after the build's last status


class BuilderLogMirror:
    """One build's mirror: `start()`, then `write(line)` any number of times, then `finish()`."""

    def __init__(self, manager: SandboxManager, agents: AgentClients, image: str, namespace: str,
                 session_label: str | None) -> None:
        self._manager = manager
        self._agents = agents
        self._image = image
        self._namespace = namespace
        self._session = session_label
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        self.sandbox_id: str | None = None

    async def start(self, timeout: float = 15.0) -> str | None:
        """Start the sandbox and its process; the sandbox id, or None when it could not start."""
        try:
            rec = await self._manager.create(self._namespace, SandboxSpec(
                image=self._image, cpus=0.25, memory_mb=64, timeout_secs=3600, session_label=self._session))
            await self._manager.wait_started(rec, timeout)
            rec, endpoint = await self._manager.ready_for_traffic(rec.id)
            client = self._agents.get(rec.id, endpoint)
            self.sandbox_id = rec.id
            link = await client.post("/api/v1/processes", json={"command": "/bin/ln",
                                                                 "args": ["-sf", "/bin/cat", BUILDER_COMMAND]})
            link.raise_for_status()
            await _wait_exit(client, int(link.json()["pid"]))
            proc = await client.post("/api/v1/processes", json={"command": BUILDER_COMMAND, "stdin_mode": "pipe"})
            proc.raise_for_status()
            pid = int(proc.json()["pid"])
        except (EmulatorError, httpx.HTTPError, KeyError, ValueError) as exc:
            log.warning("build log mirror did not start: %s", exc)
            await self._end()
            return None
        self._pump = asyncio.create_task(self._run(client, pid), name=f"build-log-{rec.id}")
        return rec.id

    def write(self, line: str) -> None:
        if self._pump is not None:
            self._queue.put_nowait(line)

    async def finish(self) -> None:
        """Close the process's stdin once every line is written; end the sandbox after LINGER_SECS."""
        if self._pump is not None:
            self._queue.put_nowait(None)
            await asyncio.gather(self._pump, return_exceptions=True)
        asyncio.get_running_loop().call_later(LINGER_SECS, lambda: asyncio.ensure_future(self._end()))

    async def _run(self, client: httpx.AsyncClient, pid: int) -> None:
        try:
            while True:
                line = await self._queue.get()
                lines = [line]
                while not self._queue.empty() and lines[-1] is not None:
                    lines.append(self._queue.get_nowait())
                done = lines[-1] is None
                text = "".join(f"{x}\n" for x in lines if x is not None)
                if text:
                    await client.post(f"/api/v1/processes/{pid}/stdin", content=text.encode())
                if done:
                    await client.post(f"/api/v1/processes/{pid}/stdin/close")
                    return
        except httpx.HTTPError as exc:
            log.warning("build log mirror stopped: %s", exc)

    async def _end(self) -> None:
        if self.sandbox_id is None:
            return
        try:
            await self._manager.terminate(self._manager.resolve_route(self.sandbox_id))
        except EmulatorError:
            pass


async def _wait_exit(client: httpx.AsyncClient, pid: int) -> None:
    for _ in range(100):
        info = (await client.get(f"/api/v1/processes/{pid}")).json()
        if info.get("status") != "running":
            return
        await asyncio.sleep(0.02)

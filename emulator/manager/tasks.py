"""The manager's background tasks, keyed by (kind, sandbox id), never handed out of the manager."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Literal

TaskKind = Literal["launch", "suspend", "resume", "snapshot", "timeout-suspend", "warm"]


class TaskSet:
    """At most one running task per (kind, sandbox id); all of them cancelled and awaited on stop."""

    def __init__(self) -> None:
        self._tasks: dict[tuple[TaskKind, str], asyncio.Task[Any]] = {}

    def spawn(self, kind: TaskKind, sandbox_id: str, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        key = (kind, sandbox_id)
        task = asyncio.ensure_future(coro)
        task.set_name(f"{kind}-{sandbox_id}")
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._tasks.pop(key, None) if self._tasks.get(key) is t else None)
        return task

    def running(self, kind: TaskKind, sandbox_id: str) -> asyncio.Task[Any] | None:
        task = self._tasks.get((kind, sandbox_id))
        return task if task is not None and not task.done() else None

    async def wait(self, kind: TaskKind, sandbox_id: str, timeout: float | None) -> None:
        """Wait up to `timeout` seconds (None: no limit) for that task, if one runs; never raises its error."""
        task = self.running(kind, sandbox_id)
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

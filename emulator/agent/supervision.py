"""Supervision of a managed process (``name``/``restart``/``health_check`` given): the restart policy with its
backoff, manual restarts and stops, and the TCP/HTTP health checks."""

from __future__ import annotations

import asyncio
import secrets
import time
import traceback
from typing import TYPE_CHECKING

from agent_log import log, now_ms
from errors import HttpError, SpawnError
from output_buffer import STDERR, OutputLine

if TYPE_CHECKING:
    from child_process import Child
    from process_table import Proc

MANAGED_STOP_GRACE = 10.0


class Managed:
    """Supervisor state of a managed process."""

    def __init__(self, proc: Proc, cfg: dict):
        self.proc = proc
        self.table = proc.table
        self.name = cfg["name"]
        self.id = cfg["name"] if cfg["name"] is not None else "mp-" + secrets.token_hex(6)
        self.restart = cfg["restart"]
        self.health_check = cfg["health_check"]
        self.status = "starting"
        self.restart_count = 0
        self.auto_restarts = 0
        self.health_status = "disabled" if self.health_check is None else "starting"
        self.consecutive_health_failures = 0
        self.last_exit: dict | None = None
        self.last_error: str | None = None
        self.next_restart_at: int | None = None
        self.stopping = False
        self.restarting = False
        self.backoff_attempt = 0
        self.restart_handle: asyncio.TimerHandle | None = None
        self.health_task: asyncio.Task | None = None
        self.lock = asyncio.Lock()

    def info(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "restart_count": self.restart_count,
            "restart": dict(self.restart),
            "health_check": dict(self.health_check) if self.health_check is not None else None,
            "health_status": self.health_status,
            "consecutive_health_failures": self.consecutive_health_failures,
            "last_exit": self.last_exit,
            "last_error": self.last_error,
            "next_restart_at": self.next_restart_at,
        }

    @property
    def active(self) -> bool:
        return self.status != "stopped"

    def on_spawned(self, child: Child) -> None:
        self.next_restart_at = None
        self.consecutive_health_failures = 0
        if self.health_check is None:
            self.status = "running"
            self.health_status = "disabled"
        else:
            self.status = "starting"
            self.health_status = "starting"
            self.health_task = self.table.loop.create_task(self._health_loop(child))

    def _cancel_health(self) -> None:
        if self.health_task is not None:
            self.health_task.cancel()
            self.health_task = None

    def on_child_finished(self, child: Child) -> None:
        self._cancel_health()
        self.last_exit = {
            "exit_code": child.exit_code,
            "signal": child.signal,
            "oom_killed": child.oom_killed,
            "ended_at": child.ended_at,
        }
        if self.restarting:
            return
        if self.stopping:
            self._stopped()
            return
        failed = child.exit_code != 0
        policy = self.restart["policy"]
        want = policy == "always" or (policy == "on_failure" and failed)
        if want and time.monotonic() - child.start_mono >= 10.0:
            self.backoff_attempt = 0
        self._schedule_restart(want)

    def _schedule_restart(self, want: bool) -> None:
        maxr = self.restart.get("max_restarts")
        if want and maxr is not None and self.auto_restarts >= maxr:
            want = False
        if not want:
            self._stopped()
            return
        initial = max(0, self.restart["initial_backoff_ms"])
        delay_ms = min(self.restart["max_backoff_ms"], initial * (2 ** min(self.backoff_attempt, 30)))
        delay_ms = max(0, delay_ms)
        self.backoff_attempt += 1
        self.status = "backing_off"
        self.next_restart_at = now_ms() + int(delay_ms)
        self.restart_handle = self.table.loop.call_later(delay_ms / 1000.0, self._auto_restart)

    def _stopped(self) -> None:
        self.status = "stopped"
        self.next_restart_at = None
        if self.restart_handle is not None:
            self.restart_handle.cancel()
            self.restart_handle = None
        self.proc.buffer.close()
        self.table.on_entry_finished()

    def _auto_restart(self) -> None:
        self.restart_handle = None
        if self.stopping or self.restarting:
            return
        self.restart_count += 1
        self.auto_restarts += 1
        old = self.proc.child
        if old is not None:
            old.kill_tree()  # leftovers of the previous incarnation do not outlive it
        try:
            self.table.spawn(self.proc)
        except SpawnError as e:
            self.last_error = e.message
            self.proc.buffer.extend([OutputLine.message(STDERR, e.message, now_ms())])
            self._schedule_restart(True)

    async def restart_now(self) -> None:
        async with self.lock:
            if self.restart_handle is not None:
                self.restart_handle.cancel()
                self.restart_handle = None
            self.restarting = True
            try:
                old = self.proc.child
                if old is not None and not old.finished:
                    old.terminate(MANAGED_STOP_GRACE)
                    await asyncio.shield(old.done)
            finally:
                self.restarting = False
            self.stopping = False
            self.backoff_attempt = 0
            self.auto_restarts = 0  # a manual restart gives the restart policy a fresh budget
            self.proc.buffer.reopen()
            self.restart_count += 1
            try:
                self.table.spawn(self.proc)
            except SpawnError as e:
                self.last_error = e.message
                self._stopped()
                raise HttpError(
                    400, "SPAWN_FAILED", f"failed to restart {self.proc.spec.command}: {e.message}"
                ) from None

    def stop(self) -> None:
        self.stopping = True
        if self.restart_handle is not None:
            self.restart_handle.cancel()
            self.restart_handle = None
        self._cancel_health()
        child = self.proc.child
        self.status = "stopped"
        self.next_restart_at = None
        if child is not None and not child.reaped:
            child.terminate(MANAGED_STOP_GRACE)
        else:
            if child is not None:
                child.kill_tree()  # what the exited incarnation left behind (the root is gone: no grace)
            if child is None or child.finished:
                self._stopped()

    async def _health_loop(self, child: Child) -> None:
        hc = self.health_check
        try:
            await asyncio.sleep(max(0, hc["initial_delay_ms"]) / 1000.0)
            while not child.reaped and not self.stopping and self.proc.child is child:
                ok = await self._check_once(hc)
                if child.reaped or self.stopping or self.proc.child is not child:
                    return
                if ok:
                    self.consecutive_health_failures = 0
                    self.health_status = "healthy"
                    self.status = "running"
                else:
                    self.consecutive_health_failures += 1
                    if self.consecutive_health_failures >= max(1, hc["failure_threshold"]):
                        self.health_status = "unhealthy"
                        if self.restart["policy"] != "never":
                            self.last_error = f"health check failed {self.consecutive_health_failures} times in a row"
                            child.terminate(MANAGED_STOP_GRACE)
                            return
                await asyncio.sleep(max(10, hc["interval_ms"]) / 1000.0)
        except asyncio.CancelledError:
            pass
        except Exception:
            log("health check loop error:\n" + traceback.format_exc())

    async def _check_once(self, hc: dict) -> bool:
        timeout = max(10, hc["timeout_ms"]) / 1000.0
        writer = None
        try:
            reader, writer = await _connect(hc["port"], timeout)
            if hc["type"] == "tcp":
                return True
            path = hc.get("path") or "/"
            if not path.startswith("/"):
                path = "/" + path
            writer.write((f"GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n").encode())
            line = await asyncio.wait_for(reader.readline(), timeout)
            parts = line.split()
            return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
        except (OSError, asyncio.TimeoutError, ValueError):
            return False
        finally:
            if writer is not None:
                try:
                    writer.close()
                except Exception:
                    pass


async def _connect(port: int, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to `port` inside the sandbox for a health check: IPv4 loopback, IPv6 if that refuses."""
    try:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except ConnectionRefusedError:
        return await asyncio.wait_for(asyncio.open_connection("::1", port), timeout)

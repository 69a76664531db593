"""The process table: one entry (Proc) per started process, found by pid or managed name, and the live
children, which the single SIGCHLD reaper (ProcessTable.reap) reports exits to. PTY sessions register their
process among the children too, so nothing else ever waits for a pid."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import traceback
from typing import TYPE_CHECKING

from agent_log import log
from child_process import Child, read_oom_kills
from errors import HttpError, SpawnError
from output_buffer import OutputBuffer
from process_spec import Spec
from process_tree import MARKER, TreeTracker
from spawning import launch_settings, resolve_user, start_piped
from supervision import Managed

if TYPE_CHECKING:
    from pty_session import PtySession

# The agent's own settings: removed from the environment that child processes inherit.
AGENT_ENV_VARS = (
    "TLE_AGENT_SOCKET",
    "TLE_ENTRYPOINT",
    "TLE_ENTRYPOINT_GATE",
    "TLE_OUTPUT_LIMIT_BYTES",
    "TLE_MAX_FINISHED_PROCESSES",
    "TLE_DEFAULT_USER",
    MARKER,
)


class Proc:
    """A process-table entry: the spec, the current Child, the output buffer, and the optional supervisor."""

    def __init__(self, table: ProcessTable, spec: Spec, managed_cfg: dict | None):
        self.table = table
        self.spec = spec
        self.serial = next(table.serial)
        self.buffer = OutputBuffer(table.output_limit)
        self.child: Child | None = None
        self.managed = Managed(self, managed_cfg) if managed_cfg is not None else None

    @property
    def pid(self) -> int:
        return self.child.pid if self.child is not None else 0

    @property
    def current(self) -> Child:
        """The current Child. An entry joins the table only once spawned, so every entry there has one."""
        child = self.child
        if child is None:
            raise RuntimeError(f"process entry {self.serial} was never spawned")
        return child

    @property
    def finished(self) -> bool:
        """No more output will come (follow streams end)."""
        return self.buffer.closed

    def info(self) -> dict:
        c = self.current
        d = {
            "pid": c.pid,
            "status": c.status,
            "exit_code": c.exit_code,
            "signal": c.signal,
            "stdin_writable": c.stdin_writable,
            "command": self.spec.command,
            "args": list(self.spec.args),
            "started_at": c.started_at,
            "ended_at": c.ended_at,
        }
        if self.managed is not None:
            d["managed"] = self.managed.info()
        return d

    def on_child_finished(self, child: Child) -> None:
        if child is not self.child:
            return
        if self.managed is None:
            self.buffer.close()
            self.table.on_entry_finished()
        else:
            self.managed.on_child_finished(child)


class ProcessTable:
    def __init__(self, loop: asyncio.AbstractEventLoop, output_limit: int, max_finished: int):
        self.loop = loop
        self.output_limit = output_limit
        self.max_finished = max_finished
        self.serial = itertools.count(1)
        self.entries: dict[int, Proc] = {}  # serial -> Proc, in start order
        self.by_pid: dict[int, Proc] = {}  # pid -> Proc (current pid of each entry)
        self.by_name: dict[str, Proc] = {}  # managed name -> Proc
        self.children: dict[int, Child | PtySession] = {}  # pid -> live (unreaped) children only
        self.oom_seen = read_oom_kills()
        self.base_env = {k: v for k, v in os.environ.items() if k not in AGENT_ENV_VARS}
        self.default_user = os.environ.get("TLE_DEFAULT_USER") or None
        self.dropped_finished = 0
        self.trees = TreeTracker(loop)

    # -- reaping --
    def reap(self) -> None:
        """Reap every exited child (SIGCHLD); then note the process trees' changes (orphans re-parented)."""
        try:
            self._reap_all()
        finally:
            try:
                self.trees.scan()
            except Exception:
                log(f"process tree scan failed:\n{traceback.format_exc()}")

    def _reap_all(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                try:
                    child.on_reaped(status)
                except Exception:
                    log(f"error handling exit of {pid}:\n{traceback.format_exc()}")

    # -- spawning --
    def spawn(self, proc: Proc) -> Child:
        spec = proc.spec
        env, cwd, user_kwargs = launch_settings(spec, self.base_env, self.default_user)
        token = self.trees.new_token()
        env[MARKER] = token  # inherited by every descendant: the second signal of tree membership
        popen, out_fds, stdin_parent = start_piped(spec, env, cwd, user_kwargs)
        child = Child(self, proc, popen, out_fds, stdin_parent, spec.timeout)
        child.tree = self.trees.register(token, child.pid)
        self.children[child.pid] = child
        old = proc.child
        if old is not None and self.by_pid.get(old.pid) is proc:
            del self.by_pid[old.pid]
        other = self.by_pid.get(child.pid)
        if other is not None and other is not proc:  # pid reuse: forget the stale entry
            self.forget(other)
        proc.child = child
        self.by_pid[child.pid] = proc
        if proc.managed is not None:
            proc.managed.on_spawned(child)
        return child

    def start_entry(self, spec: Spec, managed_cfg: dict | None = None) -> Proc:
        proc = Proc(self, spec, managed_cfg)
        self.spawn(proc)
        self.entries[proc.serial] = proc
        if proc.managed is not None and proc.managed.name is not None:
            self.by_name[proc.managed.name] = proc
        return proc

    def forget(self, proc: Proc) -> None:
        self.entries.pop(proc.serial, None)
        if proc.child is not None and self.by_pid.get(proc.child.pid) is proc:
            del self.by_pid[proc.child.pid]
        if proc.managed is not None and proc.managed.name is not None:
            if self.by_name.get(proc.managed.name) is proc:
                del self.by_name[proc.managed.name]

    def on_entry_finished(self) -> None:
        finished = [p for p in self.entries.values() if p.finished and (p.child is None or p.child.reaped)]
        excess = len(finished) - self.max_finished
        for p in finished[: max(0, excess)]:
            self.forget(p)
            self.dropped_finished += 1

    def default_owner(self) -> tuple | None:
        """(uid, gid) that new files should get, when TLE_DEFAULT_USER is set and the agent is root."""
        if self.default_user is None or os.geteuid() != 0:
            return None
        try:
            uid, gid, _extra, _pw = resolve_user(self.default_user)
        except SpawnError:
            return None
        if uid == 0 and gid == 0:
            return None
        return uid, gid

    def lookup(self, ref: str) -> Proc:
        proc = None
        if ref.isdigit():
            try:
                proc = self.by_pid.get(int(ref))
            except ValueError:
                proc = None
        else:
            proc = self.by_name.get(ref)
        if proc is None:
            raise HttpError(404, "NOT_FOUND", f"Process {ref} not found")
        return proc

    async def terminate_all(self, grace: float) -> None:
        """Shutdown: no more restarts; SIGTERM every process group, SIGKILL what is left after `grace` seconds."""
        for p in self.entries.values():
            if p.managed is not None:
                p.managed.stopping = True
                if p.managed.restart_handle is not None:
                    p.managed.restart_handle.cancel()
        self._signal_everything(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.children and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            self.reap()
        self._signal_everything(signal.SIGKILL)
        await asyncio.sleep(0.05)
        self.reap()

    def _signal_everything(self, sig: int) -> None:
        """Every child's process group; as PID 1 also every other process of the container."""
        for child in list(self.children.values()):
            child.signal_group(sig)
        if os.getpid() == 1:
            try:
                os.kill(-1, sig)
            except OSError:
                pass

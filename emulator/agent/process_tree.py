"""Process trees: every process a started process spawns, however it detached, so that kill, a run's timeout
and a managed process's stop end all of it (the SDK: "the whole tree is killed, including children that
detached with setsid").

A process group or a session is not enough: ``setsid``, a new process group, a double fork (the grandchild is
re-parented to the agent, PID 1) or a daemon leave them. cgroups are not writable inside the container. So a
process is attributed to a tree by three signals, the first that answers wins:

1. Remembered ancestry. The agent scans ``/proc`` (on every child exit, before every kill, and every
   ``SCAN_INTERVAL`` seconds while a tree is alive) and remembers, for each new pid, the tree of its parent.
   A process keeps its tree when its parent exits and it is re-parented to the agent.
2. A marker in the environment, ``TLE_PROCESS_TREE=<token>``, that every started process gets and its
   descendants inherit (read from ``/proc/<pid>/environ``; it catches a double fork that completes between
   two scans).
3. The session: every started process leads its own session, so a descendant that did not call ``setsid``
   has the root's pid as its session id.

A process the user starts through the API is the root of its own tree, never a member of another.
Only a descendant that clears its environment, calls setsid and double-forks within one scan interval
escapes all three.

Ending a tree with SIGKILL first stops its members (SIGSTOP, so none can fork meanwhile), rescans until no
new member shows up, then kills them all. A pid is only signalled while its start time is the one seen when
it was attributed (no signal to a reused pid).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal

MARKER = "TLE_PROCESS_TREE"
SCAN_INTERVAL = 0.1
FREEZE_ROUNDS = 20


def read_stat(pid: int) -> tuple[int, int, int, str] | None:
    """-> (ppid, session id, start time in clock ticks, state letter) of a live pid, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        rest = data[data.rindex(b")") + 2 :].split()
        return int(rest[1]), int(rest[3]), int(rest[19]), rest[0].decode()
    except (ValueError, IndexError):
        return None


def read_marker(pid: int) -> tuple[bool, str | None]:
    """-> (whether the environment could be read, the tree marker in it or None). It cannot be read for
    another user's process without CAP_SYS_PTRACE, and reads empty for a moment while a process execs."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return False, None
    if not env:
        return False, None
    key = MARKER.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return True, item[len(key) :].decode("ascii", "replace")
    return True, None


class Tree:
    """One started process and everything it spawned; `members` maps live pids to their start times."""

    def __init__(self, token: str, root_pid: int, root_start: int):
        self.token = token
        self.root_pid = root_pid
        self.members: dict[int, int] = {root_pid: root_start}


class TreeTracker:
    """Attribution of every process to a tree (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.self_pid = os.getpid()
        own = read_stat(self.self_pid)
        self.self_start = own[2] if own is not None else 0
        self.trees: dict[str, Tree] = {}
        self.by_session: dict[int, Tree] = {}
        self.known: dict[int, tuple[int, Tree | None]] = {}  # pid -> (start time, tree or None)
        self.unsure: set[int] = set()  # attributed to no tree only because their environment was unreadable
        self.timer: asyncio.TimerHandle | None = None

    @staticmethod
    def new_token() -> str:
        return secrets.token_hex(8)

    def register(self, token: str, pid: int) -> Tree:
        """A process just started by the agent (with ``MARKER=token`` in its environment): a new tree."""
        st = read_stat(pid)
        start = st[2] if st is not None else 0
        tree = Tree(token, pid, start)
        self.trees[token] = tree
        self.by_session[pid] = tree
        self.known[pid] = (start, tree)
        self._arm()
        return tree

    # -- scanning --
    def _arm(self) -> None:
        if self.timer is None and self.trees:
            self.timer = self.loop.call_later(SCAN_INTERVAL, self._tick)

    def _tick(self) -> None:
        self.timer = None
        try:
            self.scan()
        finally:
            self._arm()

    def scan(self) -> None:
        """Attribute every pid not seen before; forget pids that are gone and trees left empty."""
        try:
            live = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        except OSError:
            return
        self._after_restore()
        for pid in [p for p in self.known if p not in live]:
            self._forget(pid)
        fresh = []
        for pid in live - self.known.keys():
            st = read_stat(pid)
            if st is not None:
                fresh.append((st[2], pid, st[0], st[1]))
        fresh.sort()  # by start time: a parent is attributed before its children
        for start, pid, ppid, sid in fresh:
            if pid in self.known:
                continue  # attributed meanwhile, as the parent of an earlier one
            tree = self._attribute(pid, ppid, sid, start)
            self.known[pid] = (start, tree)
            if tree is not None:
                tree.members[pid] = start
        self._retry_unsure(live)
        for token, tree in list(self.trees.items()):
            if not tree.members:
                del self.trees[token]
                if self.by_session.get(tree.root_pid) is tree:
                    del self.by_session[tree.root_pid]

    def _after_restore(self) -> None:
        """A CRIU restore recreates every process with its pid but a new start time: when the agent's own start
        time changed, take the new start times of all known processes (their ancestry is restored as it was)."""
        own = read_stat(self.self_pid)
        if own is None or own[2] == self.self_start:
            return
        self.self_start = own[2]
        for pid, (_start, tree) in list(self.known.items()):
            st = read_stat(pid)
            if st is None:
                continue
            self.known[pid] = (st[2], tree)
            if tree is not None and pid in tree.members:
                tree.members[pid] = st[2]

    def _current(self, pid: int, depth: int = 0) -> tuple[int, Tree | None] | None:
        """The known entry of a live pid, checked against its start time now: a pid that died and was reused
        since it was attributed is forgotten and attributed afresh (it is nobody's member by inheritance)."""
        entry = self.known.get(pid)
        st = read_stat(pid)
        if st is None:
            return None
        if entry is not None and entry[0] == st[2]:
            return entry
        if entry is not None:
            self._forget(pid)
        if depth > 64:
            return None
        tree = self._attribute(pid, st[0], st[1], st[2], depth + 1)
        self.known[pid] = (st[2], tree)
        if tree is not None:
            tree.members[pid] = st[2]
        return self.known[pid]

    def _forget(self, pid: int) -> None:
        _start, tree = self.known.pop(pid)
        if tree is not None:
            tree.members.pop(pid, None)
        self.unsure.discard(pid)

    def _attribute(self, pid: int, ppid: int, sid: int, start: int, depth: int = 0) -> Tree | None:
        if pid == self.self_pid:
            return None
        if ppid != self.self_pid and ppid > 0:
            parent = self._current(ppid, depth)
            if parent is not None and parent[0] <= start:
                if parent[1] is None and ppid in self.unsure:
                    self.unsure.add(pid)  # its own marker decides once it can be read
                return parent[1]
        # a child of the agent that it did not register (an orphan re-parented to it), or an unknown parent
        readable, token = read_marker(pid)
        if token is not None and token in self.trees:
            return self.trees[token]
        tree = self.by_session.get(sid)
        if tree is None and not readable:
            self.unsure.add(pid)  # read it again at the next scans (it may have been in the middle of exec)
        return tree

    def _retry_unsure(self, live: set[int]) -> None:
        for pid in list(self.unsure):
            entry = self.known.get(pid)
            if pid not in live or entry is None or entry[1] is not None:
                self.unsure.discard(pid)
                continue
            readable, token = read_marker(pid)
            if token is not None and token in self.trees:
                tree = self.trees[token]
                self.known[pid] = (entry[0], tree)
                tree.members[pid] = entry[0]
            if readable:
                self.unsure.discard(pid)

    # -- signalling --
    def _live_members(self, tree: Tree) -> list[int]:
        out = []
        for pid, start in list(tree.members.items()):
            st = read_stat(pid)
            if st is None or st[2] != start:
                tree.members.pop(pid, None)
                continue
            if st[3] not in ("Z", "X"):
                out.append(pid)
        return out

    def alive(self, tree: Tree) -> bool:
        """Whether any process of the tree still runs (zombies do not count)."""
        self.scan()
        return bool(self._live_members(tree))

    def signal_tree(self, tree: Tree, sig: int) -> int:
        """Send `sig` to every live process of the tree; -> how many were signalled. SIGKILL freezes the tree
        first so that no member can fork a new one between the scan and the kill."""
        self.scan()
        if sig != signal.SIGKILL:
            return sum(_kill(pid, sig) for pid in self._live_members(tree))
        frozen: set[int] = set()
        for _ in range(FREEZE_ROUNDS):
            new = [p for p in self._live_members(tree) if p not in frozen]
            if not new:
                break
            for pid in new:
                _kill(pid, signal.SIGSTOP)
                frozen.add(pid)
            self.scan()
        return sum(_kill(pid, signal.SIGKILL) for pid in self._live_members(tree))


def _kill(pid: int, sig: int) -> int:
    try:
        os.kill(pid, sig)
        return 1
    except OSError:
        return 0


def become_subreaper() -> None:
    """Outside a container (the agent is not PID 1, e.g. in tests) orphans of its processes come back to it,
    as they do to PID 1 in a sandbox, so that it reaps them. No-op where prctl is not available."""
    if os.getpid() == 1:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_child_subreaper = 36
        libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass

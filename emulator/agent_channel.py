"""The verified channel from the host to one sandbox's agent (docs/security.md, "the agent channel").

The agent listens on a unix socket in a folder the sandbox can write (`/.tle/run`, a bind mount of
`<data>/run/<sandbox id>/`). Whatever a sandbox puts there is untrusted: a symlink to the host's
Docker socket or to another sandbox's agent, a FIFO, a socket of its own. So the host never connects
by path. It:

1. opens the sandbox's folder and then `agent.sock` inside it with `O_NOFOLLOW` (the socket entry
   itself with `O_PATH`), and refuses anything that is not a socket inode: a link is never followed;
2. connects through `/proc/self/fd/<fd>`, which names exactly that inode, so the entry cannot be
   swapped between the check and the connect;
3. reads the listener's credentials (`SO_PEERCRED`) and requires its pid to be the container's
   PID 1, the agent (looked up from the engine; refreshed once on a mismatch, since a CRIU restore
   gives the agent a new host pid). A socket that another process of the sandbox binds there is not
   the agent and is refused.

Under gVisor (runsc, docs/gvisor.md) the same path and the same steps hold, with one difference in
step 3: the sandbox's processes are not host processes. Docker's PID 1 of the container is runsc's
sandbox process (`runsc-sandbox ... <container id>`), and a unix socket the agent binds on the bind
mount (`--host-uds=create`) is a host socket bound by that container's gofer (`runsc-gofer`, a
sibling of the sandbox process under the same shim, whose `--bundle` names the container). So for a
container whose PID 1 is a runsc sandbox process, the listener must be exactly that gofer or that
sandbox process: another container's runsc, a host process or a runc sandbox's process is refused.
What gVisor cannot tell the host is which process inside the sandbox bound the socket, so for gVisor
sandboxes the socket inode is pinned as well: the first verified connection (the launch's health
check, made before any process of the sandbox's user runs) records the socket file's inode, and later
connections must reach that same inode. A process that removes the agent's socket and binds its own
makes a new inode and is refused. The pin lives in memory: after an emulator restart the first
connection pins again (docs/gvisor.md).

A refused channel raises `httpcore.ConnectError`, so callers see it as an agent that is not
answering (the proxy's 503 before anything was sent upstream).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpcore

log = logging.getLogger(__name__)

AGENT_SOCKET_NAME = "agent.sock"

PidLookup = Callable[[str], Awaitable[int | None]]
"""container id -> host pid of the container's PID 1 (None when it is not running)."""


@dataclass(frozen=True)
class AgentEndpoint:
    """Where one sandbox's agent is: its host folder and the container whose PID 1 it must be."""

    sandbox_id: str
    run_dir: Path
    container_id: str | None


class ChannelRefused(httpcore.ConnectError):
    """The socket entry or its listener is not the sandbox's agent."""


def open_socket_entry(run_dir: Path) -> int:
    """An `O_PATH` fd of `run_dir/agent.sock`, never following a link; the caller closes it.

    Raises FileNotFoundError while the agent has not bound yet, ChannelRefused for anything that is
    not a socket inode (a symlink, a FIFO, a regular file).
    """
    dfd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = os.open(AGENT_SOCKET_NAME, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    finally:
        os.close(dfd)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISSOCK(mode):
        os.close(fd)
        raise ChannelRefused(f"{run_dir}/{AGENT_SOCKET_NAME} is not a socket (mode {stat.filemode(mode)}); "
                             "refusing to follow it")
    return fd


def peer_pid(sock: socket.socket) -> int:
    """The pid (in the host's pid namespace) of the process that bound the listening socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)


def _argv(pid: int) -> list[str]:
    """A host process's command line ([] when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the fields after the command name, which is in parentheses and may hold spaces
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def is_gvisor_listener(peer: int, pid1: int, container_id: str) -> bool:
    """True when `pid1` (Docker's State.Pid) is the runsc sandbox process of `container_id` and `peer`
    is it or its gofer: the runsc processes that bind a gVisor sandbox's host unix sockets. Never true
    for a runc container (its PID 1 is the sandbox's own first process, not `runsc-sandbox`)."""
    sandbox = _argv(pid1)
    if not sandbox or os.path.basename(sandbox[0]) != "runsc-sandbox" or sandbox[-1] != container_id:
        return False
    if peer == pid1:
        return True
    gofer = _argv(peer)
    return (bool(gofer) and os.path.basename(gofer[0]) == "runsc-gofer" and _ppid(peer) == _ppid(pid1)
            and any(a.startswith("--bundle=") and a.rstrip("/").endswith("/" + container_id) for a in gofer))


class AgentPids:
    """Cache of container id -> the host pid of its PID 1, refreshed on a mismatch; and of the gVisor
    listener pid accepted for it (`is_gvisor_listener`)."""

    def __init__(self, lookup: PidLookup) -> None:
        self._lookup = lookup
        self._pids: dict[str, int | None] = {}
        self._gvisor: dict[str, int] = {}
        self._inodes: dict[str, tuple[int, int]] = {}  # gVisor sandboxes: the agent socket's (st_dev, st_ino)

    async def is_agent(self, container_id: str | None, pid: int, inode: tuple[int, int] = (0, 0)) -> bool:
        """Whether the listener `pid`, reached through the socket file `inode`, is the container's agent."""
        if container_id is None:
            return False
        if pid == self._pids.get(container_id):
            return True
        if pid == self._gvisor.get(container_id):
            return self._pin(container_id, inode)
        pid1 = self._pids[container_id] = await self._lookup(container_id)
        self._gvisor.pop(container_id, None)
        if pid1 == pid:
            return True
        if pid1 is not None and is_gvisor_listener(pid, pid1, container_id):
            self._gvisor[container_id] = pid
            return self._pin(container_id, inode)
        return False

    def _pin(self, container_id: str, inode: tuple[int, int]) -> bool:
        """The first gVisor connection pins the socket inode; later ones must match it."""
        return self._inodes.setdefault(container_id, inode) == inode

    def forget(self, container_id: str | None) -> None:
        self._pids.pop(container_id or "", None)
        self._gvisor.pop(container_id or "", None)
        self._inodes.pop(container_id or "", None)


class VerifiedAgentBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to the verified agent of one endpoint."""

    def __init__(self, endpoint: AgentEndpoint, pids: AgentPids) -> None:
        self._endpoint = endpoint
        self._pids = pids
        self._inner = httpcore.AnyIOBackend()

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        try:
            fd = open_socket_entry(self._endpoint.run_dir)
        except ChannelRefused as exc:
            log.warning("sandbox %s: %s", self._endpoint.sandbox_id, exc)
            raise
        except OSError as exc:
            raise httpcore.ConnectError(f"agent socket not there: {exc}") from exc
        try:
            st = os.fstat(fd)
            stream = await self._inner.connect_unix_socket(f"/proc/self/fd/{fd}", timeout, socket_options)
        finally:
            os.close(fd)
        pid = peer_pid(stream.get_extra_info("socket"))
        if not await self._pids.is_agent(self._endpoint.container_id, pid, (st.st_dev, st.st_ino)):
            await stream.aclose()
            log.warning("sandbox %s: the socket's listener (pid %d) is not the sandbox's agent; refused",
                        self._endpoint.sandbox_id, pid)
            raise ChannelRefused(f"the listener on the agent socket (pid {pid}) is not the sandbox's agent")
        return stream

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the agent channel is a unix socket only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

"""What CRIU would dump but could not restore: TCP sockets tied to the sandbox's network address.

CRIU restores a TCP connection (tcp-established) by re-creating it on the same local address. A
restored sandbox gets a new container, so a new address (Docker's bridge hands the old one to the
next container that starts); only loopback addresses come back the same. A connection from the
sandbox's own address (to any host outside it, or to itself through that address) would dump fine
and then fail every restore, leaving a suspended sandbox that can never resume. So such a dump is
refused up front, naming the connections, while the sandbox keeps running untouched.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from emulator.errors import SnapshotFailed

DEFAULT_RUNC_ROOT = Path("/run/docker/runtime-runc/moby")
# /proc/net/tcp states that are a socket CRIU dumps with its address: all but SYN_RECV (in flight:
# skip-in-flight drops it), TIME_WAIT (owned by no process) and CLOSE.
_SKIPPED_STATES = {"03", "06", "07"}
_LISTEN = "0A"


def _addr(hex_addr: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word in host (little-endian) order.
    fixed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(fixed)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, int(port, 16)


def address_bound_tcp(pid: int) -> list[str]:
    """TCP sockets in the network namespace of `pid` that only the same address could restore
    (see bound_in_table), from /proc/<pid>/net/tcp and tcp6."""
    found: list[str] = []
    for table in ("tcp", "tcp6"):
        try:
            found += bound_in_table(Path(f"/proc/{pid}/net/{table}").read_text())
        except OSError:
            continue
    return found


def bound_in_table(text: str) -> list[str]:
    """From one /proc/net/tcp{,6} table: connections (any state but in-flight or TIME_WAIT) and
    listeners on a non-loopback local address (a wildcard listener restores anywhere), each as
    "local -> remote" or "listening on local"."""
    found: list[str] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] in _SKIPPED_STATES:
            continue
        (lip, lport), (rip, rport) = _addr(fields[1]), _addr(fields[2])
        if lip.is_loopback or lip.is_unspecified:
            continue
        found.append(f"listening on {lip}:{lport}" if fields[3] == _LISTEN else f"{lip}:{lport} -> {rip}:{rport}")
    return found


def init_pid(container_id: str, runc_root: Path = DEFAULT_RUNC_ROOT) -> int | None:
    """The host pid of a running container's first process, from runc's state (None if unknown)."""
    try:
        state = json.loads((runc_root / container_id / "state.json").read_text())
        return int(state["init_process_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def refuse_unrestorable(container_id: str, runc_root: Path = DEFAULT_RUNC_ROOT) -> None:
    """Raise SnapshotFailed when the container holds TCP sockets a restore could not re-create."""
    pid = init_pid(container_id, runc_root)
    if pid is None:
        return  # not a runc container we can see into: CRIU itself will say what it cannot do
    bound = address_bound_tcp(pid)
    if bound:
        shown = ", ".join(bound[:3]) + (f" and {len(bound) - 3} more" if len(bound) > 3 else "")
        raise SnapshotFailed(
            "snapshot of the process state failed: the sandbox holds TCP sockets on its network address "
            f"({shown}); a restored sandbox gets a new address and CRIU re-creates TCP connections only on "
            "the same one (loopback connections are kept). Close them and try again", permanent=True)

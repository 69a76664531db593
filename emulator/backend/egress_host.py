"""Egress rules of gVisor sandboxes on gVisor's own network stack (Docker runtime runsc-netstack), enforced
on the HOST: gVisor's stack sends raw frames past any rule in the container's own namespace (backend/egress.py),
but those frames leave through the container's veth into a Docker bridge, and with br_netfilter
(`/proc/sys/net/bridge/bridge-nf-call-iptables` = 1) the host's netfilter sees them: in FORWARD (to another
container on a bridge, or routed out) and in INPUT (to the host's own addresses). docs/gvisor.md.

Layout, filter table, IPv4 and IPv6 alike:
  - `TLE-EGRESS`, one chain shared by every emulator of the host, made once and never removed (empty, it
    does nothing). IPv4: jumped to first from Docker's `DOCKER-USER` chain (which Docker's FORWARD jumps to
    before its own rules; its final RETURN stays) and from INPUT. IPv6 (Docker writes no ip6tables rules
    here): from FORWARD and INPUT.
  - one chain per sandbox, `TLE-E-<instance 8>-<hash of the sandbox id 13>` (iptables allows 28 characters),
    jumped to from `TLE-EGRESS` by the container's IPv4 addresses (`-s`, every Docker network it is on) and,
    for IPv6, by its MAC addresses (`-m mac --mac-source`: that also covers link-local addresses Docker does
    not report). The jumps carry the comment `tle-egress sandbox <id>`.

The sandbox's chain has backend/egress.py's semantics and order, with RETURN for "allowed" (the packet goes
on through Docker's own rules, so network isolation stays Docker's) and REJECT (an ICMP "host unreachable",
`REJECT_WITH`) for "blocked": established/related -> RETURN; each deny -> REJECT; with a non-empty allow list
and internet access, DNS (53, UDP and TCP) to the container's resolvers -> RETURN; each allow -> RETURN;
then REJECT when the allow list is non-empty or internet access is off. Each change is one
`iptables-restore --noflush` per family (one transaction: the chain is flushed, refilled and its jumps
replaced at once). Edits of the shared chain are serialised between emulators by a lock file.

A chain matches by address, and Docker gives a freed address to the next container: so a sandbox's chain is
removed as soon as its container stops running there (terminate, suspend; manager/context.py), written again
for the new address at resume, and at start-up `sweep` removes every chain whose container no longer runs at
its addresses (also another emulator's, left by one that was killed), checked with Docker under the lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import shlex
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from emulator.backend.base import ContainerState
from emulator.backend.egress import EgressRules, policy_rules
from emulator.errors import EmulatorError

PARENT = "TLE-EGRESS"
CHAIN_PREFIX = "TLE-E-"
_COMMENT = "tle-egress sandbox"
_TOOLS = {4: ("iptables", "iptables-restore"), 6: ("ip6tables", "ip6tables-restore")}
# where the shared chain is jumped to from, per family (IPv4: Docker's documented place for user rules)
_HOOKS = {4: ("DOCKER-USER", "INPUT"), 6: ("FORWARD", "INPUT")}
_BRIDGE_SYSCTLS = ("/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables")
# The ICMP a blocked packet is answered with: codes every gVisor release turns into a socket error, so a connect
# fails at once (EHOSTUNREACH for IPv4, as under runc; ENETUNREACH for IPv6). Older gVisor stacks ignore
# "administratively prohibited" (what backend/egress.py's in-namespace rules send; this host's runsc 20240729 does
# answer it with EHOSTUNREACH, measured), and a connect would then hang until its timeout.
REJECT_WITH = {4: "icmp-host-unreachable", 6: "icmp6-no-route"}
LOCK_FILE = Path("/run/lock/tensorlake-emulator-egress.lock")
_TIMEOUT = 20.0  # seconds for one iptables command (it waits up to 5 s for the xtables lock)


@dataclass(frozen=True)
class Addresses:
    """Where a container's frames come from: its IPv4 addresses and MAC addresses on every Docker network."""

    ipv4: tuple[str, ...] = ()
    macs: tuple[str, ...] = ()


def addresses_of(networks: dict[str, Any] | None) -> Addresses:
    """The addresses of a container from its inspect's `NetworkSettings.Networks` ({name: {IPAddress, ...}})."""
    nets = list((networks or {}).values())
    return Addresses(ipv4=tuple(sorted({n["IPAddress"] for n in nets if n.get("IPAddress")})),
                     macs=tuple(sorted({n["MacAddress"].lower() for n in nets if n.get("MacAddress")})))


def unavailable() -> str | None:
    """Why host-side rules cannot be written here (None: they can): a missing tool, or bridged traffic that
    the host's iptables do not see (br_netfilter not loaded, or its bridge-nf-call-ip(6)tables off)."""
    missing = [t for pair in _TOOLS.values() for t in pair if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} missing on the host"
    for path in _BRIDGE_SYSCTLS:
        try:
            if Path(path).read_text().strip() != "1":
                return f"{path} is not 1"
        except OSError:
            return f"{path} is missing (the br_netfilter module is not loaded)"
    return None


def chain_name(instance: str, sandbox_id: str) -> str:
    """The sandbox's own chain (28 characters at most): its emulator's instance and a hash of its id."""
    return f"{CHAIN_PREFIX}{instance[:8]}-{hashlib.sha256(sandbox_id.encode()).hexdigest()[:13]}"


def chain_rules(chain: str, rules: EgressRules, version: int) -> list[str]:
    """The `-A <chain> ...` lines of the sandbox's chain for one address family (4 or 6); the order above."""
    return policy_rules(chain, rules, version, "RETURN", REJECT_WITH[version])


def jump_rules(chain: str, sandbox_id: str, addrs: Addresses, version: int) -> list[str]:
    """The `-A TLE-EGRESS ...` lines that send the sandbox's traffic of one family to its chain."""
    comment = f'-m comment --comment "{_COMMENT} {sandbox_id}"'
    if version == 4:
        return [f"-A {PARENT} -s {ip}/32 {comment} -j {chain}" for ip in addrs.ipv4]
    return [f"-A {PARENT} -m mac --mac-source {mac} {comment} -j {chain}" for mac in addrs.macs]


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmulatorError(f"{argv[0]} on the host failed: {exc}") from None


def _restore(version: int, lines: list[str]) -> None:
    res = _run([_TOOLS[version][1], "-w", "5", "--noflush"], "\n".join(["*filter", *lines, "COMMIT"]) + "\n")
    if res.returncode != 0:
        raise EmulatorError(f"{_TOOLS[version][1]} on the host failed: {res.stderr.strip()[:500]}")


def _lock_acquire() -> IO[str]:
    path = LOCK_FILE if LOCK_FILE.parent.is_dir() else Path("/tmp") / LOCK_FILE.name
    f = open(path, "a")  # noqa: SIM115 - released by _lock_release
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def _lock_release(f: IO[str]) -> None:
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


@contextmanager
def _locked() -> Iterator[None]:
    """One emulator at a time edits the shared chain (the xtables lock covers one command, not a read-modify-write)."""
    f = _lock_acquire()
    try:
        yield
    finally:
        _lock_release(f)


def _ensure_parent(version: int) -> None:
    """`TLE-EGRESS` exists and is jumped to first from the hooks (made once per host; idempotent)."""
    tool = _TOOLS[version][0]
    if _run([tool, "-w", "5", "-S", PARENT]).returncode != 0:
        res = _run([tool, "-w", "5", "-N", PARENT])
        if res.returncode != 0 and "exist" not in res.stderr:
            raise EmulatorError(f"{tool} -N {PARENT} failed: {res.stderr.strip()[:300]}")
    for hook in _HOOKS[version]:
        if _run([tool, "-w", "5", "-C", hook, "-j", PARENT]).returncode != 0:
            res = _run([tool, "-w", "5", "-I", hook, "1", "-j", PARENT])
            if res.returncode != 0:
                why = " (dockerd runs without its iptables rules?)" if hook == "DOCKER-USER" else ""
                raise EmulatorError(f"{tool}: cannot jump to {PARENT} from {hook}{why}: {res.stderr.strip()[:300]}")


def _table(version: int) -> list[str]:
    res = _run([_TOOLS[version][0], "-w", "5", "-S"])
    if res.returncode != 0:
        raise EmulatorError(f"{_TOOLS[version][0]} -S failed: {res.stderr.strip()[:300]}")
    return res.stdout.splitlines()


def _jumps_to(table: list[str], chain: str) -> list[str]:
    """The `-D` lines removing every jump of `TLE-EGRESS` to `chain`."""
    return ["-D" + line[2:] for line in table if line.startswith(f"-A {PARENT} ") and line.endswith(f" -j {chain}")]


def _apply_sync(instance: str, sandbox_id: str, addrs: Addresses, rules: EgressRules) -> None:
    chain = chain_name(instance, sandbox_id)
    with _locked():
        for version in (4, 6):
            _ensure_parent(version)
            lines = [f":{chain} - [0:0]", *_jumps_to(_table(version), chain), *chain_rules(chain, rules, version),
                     *jump_rules(chain, sandbox_id, addrs, version)]
            _restore(version, lines)


def _remove_chains(version: int, table: list[str], chains: Iterable[str]) -> int:
    removed = 0
    for chain in chains:
        if f"-N {chain}" in table:
            _restore(version, [*_jumps_to(table, chain), f"-F {chain}", f"-X {chain}"])
            removed += 1
    return removed


def _remove_sync(instance: str, sandbox_id: str) -> None:
    chain = chain_name(instance, sandbox_id)
    with _locked():
        for version in (4, 6):
            _remove_chains(version, _table(version), [chain])


def _owners(table: list[str]) -> dict[str, tuple[str, set[str]]]:
    """{chain: (sandbox id, the sources its jumps match)} of the emulator's chains, every instance's."""
    out: dict[str, tuple[str, set[str]]] = {}
    for line in table:
        if line.startswith("-N " + CHAIN_PREFIX):
            out.setdefault(line.split()[1], ("", set()))
        if not line.startswith(f"-A {PARENT} "):
            continue
        words = shlex.split(line)
        chain, comment = words[-1], next((w for w in words if w.startswith(_COMMENT + " ")), "")
        sources = {words[i + 1].split("/")[0].lower() for i, w in enumerate(words) if w in ("-s", "--mac-source")}
        if chain.startswith(CHAIN_PREFIX) and comment:
            out[chain] = (comment.removeprefix(_COMMENT + " "), out.get(chain, ("", set()))[1] | sources)
    return out


async def sweep(state: Callable[[str], Awaitable[ContainerState | None]]) -> int:
    """Remove every chain of the emulator's (any instance's) whose sandbox's container (`state("tle-<id>")`,
    the backend's) no longer runs at the addresses its jumps match: ended, suspended, or gone while its emulator
    was down, or left by an emulator that was killed. Others, and rules the emulator did not make, are left
    alone; a container whose state cannot be read keeps its chain. The whole sweep holds the lock, so an
    emulator applying rules meanwhile waits for it. Returns how many chains (per family) went. Raises
    EmulatorError."""
    lock = await asyncio.to_thread(_lock_acquire)
    try:
        removed = 0
        for version in (4, 6):
            table = await asyncio.to_thread(_table, version)
            stale = []
            for chain, (sandbox_id, sources) in _owners(table).items():
                try:
                    st = await state(f"tle-{sandbox_id}") if sandbox_id else None
                except EmulatorError:
                    continue
                have = addresses_of(st.networks) if st is not None and st.running else Addresses()
                if not sources or not sources <= set(have.ipv4 if version == 4 else have.macs):
                    stale.append(chain)
            removed += await asyncio.to_thread(_remove_chains, version, table, stale)
        return removed
    finally:
        await asyncio.to_thread(_lock_release, lock)


async def apply(instance: str, sandbox_id: str, addrs: Addresses, rules: EgressRules) -> None:
    """Put `rules` in force for the traffic of a container at `addrs` (both families, atomically each).

    Replaces the sandbox's chain and its jumps (a resume's new address drops the old one). Raises
    EmulatorError when iptables refuses (the previous rules then stay: a restore commits all or nothing).
    """
    if not addrs.ipv4 and not addrs.macs:
        raise EmulatorError(f"sandbox {sandbox_id}'s container has no network address to apply its rules to")
    await asyncio.to_thread(_apply_sync, instance, sandbox_id, addrs, rules)


async def remove(instance: str, sandbox_id: str) -> None:
    """Remove the sandbox's chain and jumps, when it has any (it stopped running on its address).

    Raises EmulatorError."""
    await asyncio.to_thread(_remove_sync, instance, sandbox_id)

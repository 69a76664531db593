"""Egress rules in a sandbox's own network namespace, written with iptables from the host.

The rules live in the filter table's OUTPUT chain of the container's namespace (entered with
`nsenter --net=/proc/<pid>/ns/net`), replaced as a whole by one `iptables-restore` per address
family, so a change is atomic: a sandbox never runs with half a policy. The sandbox's processes
cannot change them: the container has no CAP_NET_ADMIN (backend/docker.py `_CAPS`).

Semantics (the SDK's `NetworkConfig` docstring, 0.5.163), in rule order:
  1. loopback is always allowed (it never leaves the sandbox);
  2. packets of established/related connections are allowed (a stateful firewall, as documented);
  3. every `deny_out` destination is rejected (deny wins, also over the DNS resolver);
  4. with a non-empty `allow_out` and `allow_internet_access`, DNS (port 53, UDP and TCP) to the
     container's resolvers is allowed;
  5. every `allow_out` destination is allowed;
  6. the rest: rejected when `allow_out` is non-empty or `allow_internet_access` is false, else allowed.
Rejected packets get an ICMP "administratively prohibited", so a connect fails at once with
EHOSTUNREACH instead of hanging until its timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from emulator.errors import EmulatorError, NotSupported

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class EgressRules:
    """A policy with every host name already resolved: what one namespace gets."""

    allow_internet_access: bool = True
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    resolvers: tuple[Network, ...] = field(default=())

    @property
    def unrestricted(self) -> bool:
        """True when the rules let everything out (the state of a fresh container)."""
        return self.allow_internet_access and not self.allow and not self.deny


def policy_rules(chain: str, rules: EgressRules, version: int, allow: str, reject: str) -> list[str]:
    """The `-A <chain> ...` lines of a restricted policy for one address family (4 or 6), from the
    established/related rule on (rules 2-6 of the module docstring); `allow` is the target of allowed
    traffic (ACCEPT, or RETURN in a host chain), `reject` the REJECT code. Shared with egress_host."""
    drop = f"-j REJECT --reject-with {reject}"
    out = [f"-A {chain} -m conntrack --ctstate ESTABLISHED,RELATED -j {allow}"]
    out += [f"-A {chain} -d {net} {drop}" for net in _family(rules.deny, version)]
    if rules.allow and rules.allow_internet_access:
        for net in _family(rules.resolvers, version):
            out += [f"-A {chain} -d {net} -p {proto} --dport 53 -j {allow}" for proto in ("udp", "tcp")]
    out += [f"-A {chain} -d {net} -j {allow}" for net in _family(rules.allow, version)]
    if rules.allow or not rules.allow_internet_access:
        out.append(f"-A {chain} {drop}")
    return out


def ruleset(rules: EgressRules, version: int) -> str:
    """The `iptables-restore` input (filter table) for one address family (4 or 6)."""
    reject = "icmp-admin-prohibited" if version == 4 else "icmp6-adm-prohibited"
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    if not rules.unrestricted:
        lines += ["-A OUTPUT -o lo -j ACCEPT", *policy_rules("OUTPUT", rules, version, "ACCEPT", reject)]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _family(nets: Iterable[Network], version: int) -> list[Network]:
    return [n for n in nets if n.version == version]


DOCKER_ROOT = Path("/var/lib/docker")  # where Docker keeps each container's resolv.conf


def resolvers_of(pid: int) -> tuple[Network, ...]:
    """The nameservers of the container's /etc/resolv.conf (read through /proc/<pid>/root), as /32 or /128.

    Under gVisor `pid` is runsc's sandbox process, whose root is not the container's: the file is then
    the one Docker bind-mounts into the container (`<docker root>/containers/<id>/resolv.conf`)."""
    path = Path(f"/proc/{pid}/root/etc/resolv.conf")
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if argv and Path(argv[0].decode(errors="replace")).name == "runsc-sandbox":
            cid = next((a.decode() for a in reversed(argv) if a), "")
            path = DOCKER_ROOT / "containers" / Path(cid).name / "resolv.conf"
        text = path.read_text(errors="replace")
    except OSError:
        return ()
    out: list[Network] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(ipaddress.ip_network(parts[1].split("%")[0]))
            except ValueError:
                continue
    return tuple(out)


def tools_missing() -> list[str]:
    """The host commands enforcement needs that are not on PATH (emulator/setup/host-setup.sh installs them)."""
    return [t for t in ("nsenter", "iptables-restore", "ip6tables-restore") if shutil.which(t) is None]


async def apply(pid: int, rules: EgressRules) -> None:
    """Replace the filter table of the namespace of host process `pid` with `rules`, both families.

    Raises NotSupported when iptables or nsenter is missing, EmulatorError when a restore is refused
    (the namespace keeps its previous table: iptables-restore commits all or nothing).
    """
    missing = tools_missing()
    if missing:
        raise NotSupported(f"network egress rules need {', '.join(missing)} on the host "
                           "(emulator/setup/host-setup.sh installs iptables)")
    for version, tool in ((4, "iptables-restore"), (6, "ip6tables-restore")):
        proc = await asyncio.create_subprocess_exec(
            "nsenter", f"--net=/proc/{pid}/ns/net", tool, "-w", "5",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate(ruleset(rules, version).encode())
        if proc.returncode != 0:
            raise EmulatorError(f"{tool} in the sandbox's network namespace failed: "
                                f"{err.decode(errors='replace').strip()[:500]}")

"""A sandbox's network policy (`allow_internet_access`, `allow_out`, `deny_out`) turned into rules
and kept in force: after a container starts, after every resume or restore (CRIU's restore runs
in a NEW network namespace, which starts empty), on `update`, and for running sandboxes when the
emulator starts again. The rules themselves: backend/egress.py, in the container's namespace; for a
gVisor sandbox on gVisor's own network stack (Docker runtime runsc-netstack), whose raw frames pass by
those, backend/egress_host.py, on the host, keyed by the container's addresses: removed when it stops
running on them (terminate, suspend: context.py `drop_host_rules`), swept at start-up for sandboxes gone.

Host names are resolved by the emulator (the host's resolver) each time rules are applied; an
entry's optional `:port` is accepted and ignored, as the SDK documents.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

from emulator.backend import egress as rules_backend
from emulator.backend import egress_host
from emulator.backend.base import AGENT_DIR_IN_SANDBOX
from emulator.backend.egress import EgressRules, Network
from emulator.errors import BadRequest, EmulatorError, NotSupported
from emulator.labels import instance_label
from emulator.manager.context import ManagerContext
from emulator.model.records import SandboxRecord
from emulator.model.runtimes import RUNSC_NETSTACK
from emulator.model.states import SandboxStatus

log = logging.getLogger(__name__)
RESOLVE_TIMEOUT = 10.0  # seconds for all the host names of one policy
GATE_FILE = "egress-ready"  # in the sandbox's run folder (mounted at AGENT_DIR_IN_SANDBOX)


def restricted(policy: dict[str, Any] | None) -> bool:
    """True when the policy limits egress at all (None or the defaults do not)."""
    if not policy:
        return False
    return (policy.get("allow_internet_access") is False or bool(policy.get("allow_out"))
            or bool(policy.get("deny_out")))


def offline_only(policy: dict[str, Any] | None) -> bool:
    """True for "no internet and nothing allowed" (a container with no network gives exactly that)."""
    return policy is not None and policy.get("allow_internet_access") is False and not policy.get("allow_out")


def needs_interface(policy: dict[str, Any] | None) -> bool:
    """Whether the sandbox's container gets a network interface. Always, where rules can be written
    (so `update` can open a closed sandbox); without iptables an offline-only policy falls back to a
    container with no network at all, as before rules existed."""
    return not (offline_only(policy) and rules_backend.tools_missing())


def check_host(policy: dict[str, Any] | None) -> None:
    """Raises NotSupported when the policy limits egress and this host cannot enforce it."""
    missing = rules_backend.tools_missing()
    if restricted(policy) and missing and not offline_only(policy):
        raise NotSupported(f"network egress rules need {', '.join(missing)} on the host "
                           "(emulator/setup/host-setup.sh installs iptables)")


def _split(entry: str) -> tuple[str, Network | None]:
    """(host, network): the network when the entry is an IP or CIDR, else None (a host name)."""
    host = entry
    if entry.count(":") == 1:  # a ":port" suffix; more colons is an IPv6 address
        host = entry.split(":")[0]
    try:
        return host, ipaddress.ip_network(host, strict=False)
    except ValueError:
        return host.rstrip("."), None


def _lookup(host: str) -> list[Network]:
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [ipaddress.ip_network(str(info[4][0]).split("%")[0]) for info in infos]


async def _networks(entries: list[str]) -> tuple[Network, ...]:
    out: list[Network] = []
    for entry in entries:
        host, net = _split(entry)
        if net is not None:
            out.append(net)
            continue
        try:
            found = await asyncio.wait_for(asyncio.to_thread(_lookup, host), RESOLVE_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            raise BadRequest(f"network rule {entry!r}: the host name does not resolve ({exc or 'timed out'}); "
                             "the previous policy stays in force") from None
        out.extend(n for n in found if n not in out)
    return tuple(dict.fromkeys(out))


async def resolve(policy: dict[str, Any] | None, resolvers: tuple[Network, ...] = ()) -> EgressRules:
    """The policy with host names resolved now. Raises BadRequest for a name that does not resolve."""
    policy = policy or {}
    return EgressRules(
        allow_internet_access=policy.get("allow_internet_access", True) is not False,
        allow=await _networks(list(policy.get("allow_out") or [])),
        deny=await _networks(list(policy.get("deny_out") or [])),
        resolvers=resolvers,
    )


def host_rules_available(ctx: ManagerContext) -> bool:
    """Whether gVisor sandboxes with egress rules run on gVisor's own network stack here, their rules enforced on
    the host (TLE_GVISOR_HOST_EGRESS, and iptables and br_netfilter: backend/egress_host.py)."""
    return ctx.settings.gvisor_host_egress and egress_host.unavailable() is None


def on_host(rec: SandboxRecord) -> bool:
    """Whether the sandbox's rules live on the host: its container runs on gVisor's own network stack."""
    return rec.docker_runtime == RUNSC_NETSTACK


async def _rules_now(rec: SandboxRecord, policy: dict[str, Any] | None, resolvers: tuple[Network, ...],
                     strict: bool) -> EgressRules:
    try:
        return await resolve(policy, resolvers)
    except BadRequest as exc:
        if strict:
            raise
        # A name that resolved before does not now (resume, restart): fail closed rather than leave
        # the sandbox open or its container running behind a record that says otherwise.
        log.warning("sandbox %s: %s; all egress blocked until its policy is updated", rec.id, exc.message)
        return EgressRules(allow_internet_access=False, resolvers=resolvers)


async def _enforce_on_host(ctx: ManagerContext, rec: SandboxRecord, policy: dict[str, Any] | None,
                           fresh: bool, strict: bool) -> None:
    """`enforce` for a sandbox on gVisor's own network stack: its chain on the host, by its current addresses."""
    instance = instance_label(ctx.settings.data_dir)
    if not restricted(policy):
        if not fresh and not egress_host.unavailable():  # where no chain can have been written, none to remove
            await egress_host.remove(instance, rec.id)
        return
    why = egress_host.unavailable()
    if why:
        raise NotSupported(f"the egress rules of a gVisor sandbox on gVisor's own network stack are enforced on "
                           f"the host, which cannot here: {why} (emulator/setup/host-setup.sh)")
    state = await ctx.backend.state(rec.container_id or "")
    pid = await ctx.backend.init_pid(rec.container_id or "")
    if state is None or not state.running or pid is None:
        raise EmulatorError(f"sandbox {rec.id}'s container is not running; its network policy was not applied")
    rules = await _rules_now(rec, policy, rules_backend.resolvers_of(pid), strict)
    await egress_host.apply(instance, rec.id, egress_host.addresses_of(state.networks), rules)
    log.info("sandbox %s: egress policy applied on the host (internet=%s allow=%d deny=%d)", rec.id,
             rules.allow_internet_access, len(rules.allow), len(rules.deny))


async def enforce(ctx: ManagerContext, rec: SandboxRecord, policy: dict[str, Any] | None = None,
                  fresh: bool = False, strict: bool = False) -> None:
    """Put `policy` (default: the record's) in force in the sandbox's running container (for a gVisor
    sandbox on gVisor's own network stack: on the host, for the container's current addresses).

    `fresh`: the namespace was just made (start, resume, restore), so an unrestricted policy needs
    no work. A host name that does not resolve raises BadRequest when `strict` (update), else all
    egress is blocked. Raises NotSupported, EmulatorError (no running container, or iptables
    refused; the previous rules then stay).
    """
    policy = rec.network_policy if policy is None else policy
    if on_host(rec):
        return await _enforce_on_host(ctx, rec, policy, fresh, strict)
    if not restricted(policy) and (fresh or rules_backend.tools_missing()):
        return  # nothing to undo: a new namespace, or a host where no rules could have been written
    if fresh and not needs_interface(policy):
        return  # the container has no network at all
    check_host(policy)
    if not rec.container_id:
        raise EmulatorError(f"sandbox {rec.id} has no container to apply its network policy to")
    pid = await ctx.backend.init_pid(rec.container_id)
    if pid is None:
        raise EmulatorError(f"sandbox {rec.id}'s container is not running; its network policy was not applied")
    rules = await _rules_now(rec, policy, rules_backend.resolvers_of(pid), strict)
    await rules_backend.apply(pid, rules)
    log.info("sandbox %s: egress policy applied (%s)", rec.id, "unrestricted" if rules.unrestricted else
             f"internet={rules.allow_internet_access} allow={len(rules.allow)} deny={len(rules.deny)}")


def entrypoint_gate(rec: SandboxRecord) -> dict[str, str]:
    """Agent environment that holds the image's entrypoint until the rules are in force (a restricted
    policy with an entrypoint), else nothing. The agent itself sends no traffic."""
    if rec.entrypoint and restricted(rec.network_policy):
        return {"TLE_ENTRYPOINT_GATE": f"{AGENT_DIR_IN_SANDBOX}/{GATE_FILE}"}
    return {}


def open_gate(ctx: ManagerContext, rec: SandboxRecord) -> None:
    """Let the agent start the entrypoint: the rules of a fresh container are in force."""
    if entrypoint_gate(rec):
        (ctx.run_dirs.path(rec.id) / GATE_FILE).touch()


async def update(ctx: ManagerContext, rec: SandboxRecord, policy: dict[str, Any] | None) -> None:
    """`update(network=...)`: check the new policy (names resolve), put it in force when the sandbox
    runs, then record it. A suspended sandbox gets it at resume. Raises as `enforce`; on any error
    the previous policy stays recorded and enforced."""
    missing = rules_backend.tools_missing()
    if missing and (restricted(policy) or restricted(rec.network_policy)):
        raise NotSupported(f"changing a sandbox's network policy needs {', '.join(missing)} on the host "
                           "(emulator/setup/host-setup.sh installs iptables)")
    await resolve(policy)  # an unresolvable name is refused before anything changes
    async with ctx.table.lock(rec.id):
        if rec.status == SandboxStatus.running and rec.container_id:
            await enforce(ctx, rec, policy or {}, strict=True)
        rec.network_policy = policy


async def sweep_host_rules(ctx: ManagerContext) -> None:
    """At start-up: remove the host-side chains whose sandbox's container no longer runs at their addresses
    (ended or suspended while the emulator was down, or left by a killed emulator; backend/egress_host.py
    `sweep`); those of running sandboxes are rewritten by `reapply_running`. Failures logged."""
    if egress_host.unavailable():
        return
    try:
        removed = await egress_host.sweep(ctx.backend.state)
    except EmulatorError as exc:
        log.warning("could not sweep the host's egress chains: %s", exc.message)
        return
    if removed:
        log.info("removed %d host egress chain(s) of sandboxes no longer running there", removed)


async def reapply_running(ctx: ManagerContext) -> None:
    """At start-up: the policy of every running sandbox again (names re-resolved); failures logged."""
    await sweep_host_rules(ctx)
    if rules_backend.tools_missing():
        return  # no rules were written by this host
    for rec in list(ctx.table):
        if rec.status == SandboxStatus.running and rec.network_policy is not None:
            try:
                await enforce(ctx, rec)
                open_gate(ctx, rec)  # a launch cut off by the restart may have left its entrypoint waiting
            except EmulatorError as exc:
                log.warning("sandbox %s: could not re-apply its network policy: %s", rec.id, exc.message)

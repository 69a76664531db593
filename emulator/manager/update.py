"""Changing a live sandbox (PATCH, docs/protocol.md §6.3): its name, auto_resume, exposed ports,
authentication, network policy, or its resources alone (a live resize of the container's limits)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emulator.errors import BadRequest, EmulatorError, InvalidState, NotSupported
from emulator.manager import egress
from emulator.manager.context import ManagerContext
from emulator.model.records import ResourceResize, SandboxRecord
from emulator.model.runtimes import RUNSC, RUNSC_NETSTACK, RUNSC_NONET, gvisor_offline, gvisor_open, used_runtime
from emulator.model.states import SandboxStatus

CheckResources = Callable[[float | None, int | None], None]


async def apply(ctx: ManagerContext, rec: SandboxRecord, changes: dict[str, Any],
                check_resources: CheckResources) -> SandboxRecord:
    """Apply the PATCH body `changes` to `rec` and save it. `check_resources(cpus, memory_mb)` raises
    BadRequest for limits the host cannot give. Raises InvalidState (terminated), BadRequest."""
    if not rec.live:
        raise InvalidState(f"Sandbox {rec.id} is terminated")
    if "resources" in changes:
        return await _resize(ctx, rec, changes["resources"] or {}, check_resources)
    if "name" in changes:
        name = changes["name"]
        if name is None:
            raise BadRequest("name cannot be null")
        ctx.table.check_name(rec.namespace, name, exclude=rec.id)
    if changes.get("auto_resume") is False and not (changes.get("name") or rec.name):
        raise BadRequest("auto_resume=false requires a named sandbox")
    if "network" in changes:
        _check_gvisor_network(ctx, rec, changes["network"])
        # Enforced first: a policy that cannot be put in force changes nothing at all.
        await egress.update(ctx, rec, changes["network"])
    for key in ("name", "auto_resume", "exposed_ports", "allow_unauthenticated_access"):
        if key in changes and changes[key] is not None:
            setattr(rec, key, changes[key])
    await ctx.table.save(rec)
    return rec


async def _resize(ctx: ManagerContext, rec: SandboxRecord, res: dict[str, Any],
                  check_resources: CheckResources) -> SandboxRecord:
    """A live resize: the outcome is on record as `resource_resize` (succeeded or failed, with a generation
    the SDK polls), not raised, as the service reports it."""
    cpus = res.get("cpus", rec.cpus)
    memory_mb = res.get("memory_mb", rec.memory_mb)
    disk_mb = res.get("disk_mb", rec.disk_mb)
    check_resources(cpus, memory_mb)
    if disk_mb != rec.disk_mb:
        raise BadRequest("disk_mb cannot be changed on a live sandbox by this emulator")
    gen = (rec.resource_resize.generation + 1) if rec.resource_resize else 1
    requested = {"cpus": cpus, "memory_mb": memory_mb, "disk_mb": disk_mb}
    async with ctx.table.lock(rec.id):
        if rec.status != SandboxStatus.running or not rec.container_id:
            raise InvalidState(f"Sandbox {rec.id} can be resized only while running (it is {rec.status})")
        try:
            await ctx.backend.update_resources(rec.container_id, cpus, memory_mb)
        except EmulatorError as exc:
            rec.resource_resize = ResourceResize(generation=gen, requested=requested, status="failed",
                                                 error_message=exc.message)
        else:
            rec.cpus, rec.memory_mb = cpus, memory_mb
            rec.resource_resize = ResourceResize(generation=gen, requested=requested, status="succeeded")
        await ctx.table.save(rec)
    return rec


def _check_gvisor_network(ctx: ManagerContext, rec: SandboxRecord, policy: dict[str, Any] | None) -> None:
    """A gVisor sandbox keeps the network kind it was created with (docs/gvisor.md): under runsc-nonet
    (created without internet access) it has no interface to open; under runsc-netstack (gVisor's own network
    stack) its rules are enforced on the host, and where the host cannot (no br_netfilter), gVisor's stack
    would send its packets past the rules. Raises NotSupported for a policy the sandbox's network cannot carry."""
    if (rec.runtime or ctx.settings.runtime) != RUNSC:
        return
    used = used_runtime(rec.docker_runtime, rec.network_policy)
    if used == RUNSC_NONET and not gvisor_offline(policy):
        raise NotSupported(f"Sandbox {rec.id} runs under gVisor without a network (created with "
                           "allow_internet_access=False, so that it can suspend and take memory snapshots); "
                           "its network cannot be opened: create a new sandbox with internet access")
    if used == RUNSC_NETSTACK and not gvisor_open(policy) and not egress.host_rules_available(ctx):
        raise NotSupported(f"Sandbox {rec.id} runs on gVisor's own network stack (created with internet access "
                           "and no egress rules, so that it can suspend and take memory snapshots), whose packets "
                           "pass by the iptables rules that enforce allow_internet_access=False, allow_out and "
                           "deny_out in its namespace, and this host cannot enforce them on the host side (no "
                           "br_netfilter or iptables): create a new gVisor sandbox with the rules (it runs with "
                           "host networking), or use runc")

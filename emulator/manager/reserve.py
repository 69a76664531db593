"""The emulator's own warm reserve (issue 12): idle containers of the default image and resources, so
that a plain `Sandbox.create()` takes a running one instead of starting a container.

It is a hidden pool (model/pools.py `reserve`), kept full by the same reconciler (manager/warm.py).
A create is served from it only when nothing about the container differs from a cold create's: the
default image, no entrypoint, internet access on, no snapshot, its namespace and session label.
Other cpus and memory limits are applied in place (Docker's update), as a resize does.
"""

from __future__ import annotations

import logging

from emulator.errors import EmulatorError
from emulator.manager import warm
from emulator.manager.context import ManagerContext
from emulator.model.pools import PoolRecord, WarmContainer
from emulator.model.records import SandboxOptions
from emulator.model.spec import SandboxSpec

log = logging.getLogger(__name__)
RESERVE_ID = "reserve-default"


async def ensure_reserve(ctx: ManagerContext) -> None:
    """At start-up: the reserve pool sized to TLE_WARM_RESERVE (created, resized, or removed at 0), on
    the current default image, resources and session label (a change recycles its containers)."""
    s = ctx.settings
    pool = ctx.pools.get(RESERVE_ID)
    wanted = PoolRecord(id=RESERVE_ID, namespace="default", image=s.default_image, reserve=True,
                        warm_containers=s.warm_reserve, session_label=s.session_label or None,
                        **SandboxOptions(disk_mb=s.default_disk_mb, runtime=s.runtime).options())
    if pool is not None and (s.warm_reserve == 0 or pool.template() != wanted.template()
                             or pool.session_label != wanted.session_label):
        await ctx.pools.remove(pool)
        await warm.discard_all(ctx, pool)
        pool = None
    if pool is None and s.warm_reserve > 0:
        if not await ctx.backend.image_exists(s.default_image):
            log.warning("no warm reserve: the default image %s is missing (`tensorlake-emulator setup`)",
                        s.default_image)
            return
        await ctx.pools.add(wanted)
    elif pool is not None:
        pool.warm_containers = s.warm_reserve
        await ctx.pools.save(pool)


def _eligible(pool: PoolRecord, namespace: str, spec: SandboxSpec, image: str, ctx_runtime: str) -> bool:
    net = spec.network_policy
    # the reserve's containers run under the default runtime (TLE_RUNTIME): a create for another one starts its own
    return (namespace == pool.namespace and image == pool.image and spec.entrypoint is None
            and (pool.runtime or ctx_runtime) == (spec.runtime or ctx_runtime)
            and spec.snapshot_id is None and spec.pool_id is None  # file systems: mounted into it (create)
            # only the default network: a warm container has no egress rules (launch() applies them)
            and (net is None or (net.get("allow_internet_access", True) is not False
                                 and not net.get("allow_out") and not net.get("deny_out")))
            and (spec.session_label or None) == pool.session_label)


async def take(ctx: ManagerContext, namespace: str, spec: SandboxSpec, image: str,
               take_warm: warm.TakeWarm) -> WarmContainer | None:
    """A ready reserve container for this create, with its cpus and memory set to the spec's; None
    when the reserve is off, empty or does not fit (the caller then starts a container)."""
    pool = ctx.pools.get(RESERVE_ID)
    if pool is None or not _eligible(pool, namespace, spec, image, ctx.settings.runtime):
        return None
    entry = await take_warm(pool, True)
    if entry is None or entry.container_id is None:
        return None
    await ctx.pools.save(pool)
    cpus, memory_mb = spec.cpus or pool.cpus, spec.memory_mb or pool.memory_mb
    if (cpus, memory_mb) != (pool.cpus, pool.memory_mb):
        try:
            await ctx.backend.update_resources(entry.container_id, cpus, memory_mb)
        except EmulatorError as exc:
            log.info("reserve container %s could not take cpus=%s memory_mb=%s (%s): cold create",
                     entry.sandbox_id, cpus, memory_mb, exc.message)
            await warm.discard(ctx, pool, entry)
            return None
    return entry

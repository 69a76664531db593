"""Starting a sandbox's container (fresh or restored from a snapshot) until its agent answers."""

from __future__ import annotations

import asyncio
import logging

from emulator.backend.base import LABEL_NAMESPACE, LABEL_POOL, LABEL_SESSION, ContainerSpec
from emulator.errors import EmulatorError, ImageIncompatible
from emulator.manager import egress, faults, image_checks
from emulator.manager.context import ManagerContext
from emulator.model.faults import Fault
from emulator.model.records import SandboxRecord, SnapshotRecord
from emulator.model.runtimes import docker_runtime, image_runtime
from emulator.model.states import SandboxStatus

log = logging.getLogger(__name__)


def runtime_of(ctx: ManagerContext, rec: SandboxRecord, image: str) -> str:
    """Docker's runtime for a container of `rec` (`image` may carry a runtime suffix; the record's runtime wins,
    then the suffix, then TLE_RUNTIME): a gVisor sandbox runs on gVisor's own network stack (its egress rules
    enforced on the host) or none, which runsc can checkpoint; with rules under host networking where the host
    cannot enforce them (model/runtimes.py docker_runtime)."""
    _, runtime = image_runtime(image, ctx.settings.runtime)
    return docker_runtime(rec.runtime or runtime, rec.network_policy, ctx.checkpoints.gvisor_runtimes,
                          host_rules=egress.host_rules_available(ctx))


def container_spec(ctx: ManagerContext, rec: SandboxRecord, image: str) -> ContainerSpec:
    """The container a sandbox record asks for (its run folder is made here). `image` may carry a runtime
    suffix (a pool's image); the record's runtime wins, then the suffix, then TLE_RUNTIME."""
    return ContainerSpec(
        sandbox_id=rec.id, image=image_runtime(image, ctx.settings.runtime)[0], runtime=runtime_of(ctx, rec, image),
        cpus=rec.cpus, memory_mb=rec.memory_mb,
        pids_limit=ctx.settings.pids_limit,
        # A network interface even for "no internet": the policy is enforced by rules in the sandbox's
        # namespace (manager/egress.py), so `update` can open or close it on a running sandbox.
        network=egress.needs_interface(rec.network_policy),
        agent_dir=ctx.run_dirs.make(rec.id), agent_code=ctx.settings.agent_dir, entrypoint=rec.entrypoint,
        env={"TLE_OUTPUT_LIMIT_BYTES": str(ctx.settings.agent_output_limit), **egress.entrypoint_gate(rec)},
        labels={LABEL_NAMESPACE: rec.namespace,
                **({LABEL_SESSION: rec.session_label} if rec.session_label else {}),
                **({LABEL_POOL: rec.pool_id} if rec.pool_id else {})},
    )


async def launch(ctx: ManagerContext, rec: SandboxRecord, snap: SnapshotRecord | None,
                 fault: Fault | None = None) -> None:
    """pending -> running once the agent answers; any failure terminates with the reason on record.

    A terminate during the launch (the record leaves pending) stops it and removes what it made. An
    injected create `fault` acts first, before anything is made (manager/faults.py).
    """
    try:
        if fault is not None and not await faults.hold_launch(ctx, rec, fault):
            return
        async with ctx.table.lock(rec.id):
            if rec.status != SandboxStatus.pending:
                return  # cancelled before it started
            rec.pending_reason = "waiting_for_container"
            ctx.run_dirs.clear_socket(rec.id)
            spec = container_spec(ctx, rec, snap.base_image if snap is not None else rec.image)
            if snap is not None:
                rec.container_id = await ctx.checkpoints.restore_new(snap, spec)  # may set spec.runtime
                rec.docker_runtime = spec.runtime
            else:
                rec.container_id = await ctx.backend.create(spec)
                rec.docker_runtime = spec.runtime
                await ctx.table.save(rec)
                if rec.entrypoint:  # before the start: a missing program is named, not left to a log line
                    await image_checks.check_entrypoint(ctx, rec.container_id, rec.image, rec.entrypoint[0])
                await ctx.backend.start(rec.container_id)
            if rec.status != SandboxStatus.pending:
                # Terminated (cancelled) while the container was being made: do not leak it.
                await ctx.backend.remove(rec.container_id)
                return
            await egress.enforce(ctx, rec, fresh=True)  # before the sandbox is reported running
            egress.open_gate(ctx, rec)
            if rec.file_systems and ctx.file_systems is not None:
                await ctx.file_systems.mount_all(rec)  # before the entrypoint can look for them
            await ctx.table.save(rec)
            container_id = rec.container_id
            if not await ctx.agents.wait_healthy(ctx.run_dirs.endpoint(rec), ctx.settings.startup_timeout,
                                                 alive=lambda: _running(ctx, container_id)):
                raise await _not_healthy(ctx, container_id)
            if rec.status != SandboxStatus.pending:
                return
            ctx.set_deadline(rec)
            await ctx.table.move(rec, SandboxStatus.running)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # any failure of a launch ends the sandbox, with the reason on record
        log.warning("sandbox %s failed to start: %s", rec.id, exc)
        reason = exc.code if isinstance(exc, EmulatorError) else "StartupError"
        message = exc.message if isinstance(exc, EmulatorError) else f"{type(exc).__name__}: {exc}"
        await ctx.terminate(rec, reason, f"Failure({reason})", error_details=message)


async def _running(ctx: ManagerContext, container_id: str) -> bool:
    state = await ctx.backend.state(container_id)
    return state is not None and state.running


async def _not_healthy(ctx: ManagerContext, container_id: str) -> EmulatorError:
    """Why the agent never answered: it exited (the image cannot run it; its last output says why) or
    it is still silent at the start-up timeout."""
    state = await ctx.backend.state(container_id)
    if state is not None and not state.running:
        tail = " ".join((await ctx.backend.logs(container_id)).strip().splitlines()[-3:])[-400:]
        return ImageIncompatible(f"the image cannot run the sandbox agent: it exited at start with code "
                                 f"{state.exit_code}" + (f" ({tail})" if tail else ""))
    return EmulatorError(f"the sandbox agent did not answer within {ctx.settings.startup_timeout}s "
                         f"(see the container's log: docker logs {container_id[:12]})")

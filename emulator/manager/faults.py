"""Fault injection (issue 17, docs/controls.md "Faults"): every check (the table is manager/fault_table.py).

The points of use call in here and nowhere else decides: a create (`take_create`, then `hold_launch`
in the launch task), a suspend, resume or checkpoint (`before_transition`), a proxied request
(`take_proxy`), and `oom_kill` at once when such a fault is made. Each fault shows the SDK what the
cloud's own failure shows it: a failed create is a terminated sandbox with the reason
(`SandboxError.reason`), no capacity is `termination_reason: "no_capacity"` (the reaper's
max_pending_secs path), a failed suspend or resume the 409 the emulator answers for a failed dump or
restore, a failed checkpoint a `failed` snapshot, a proxy error a status the SDK retries (PROTOCOL.md
§3.3), an OOM kill the `oom_killed` termination the exit watch gives a real one. Nothing is made
before a create fault acts, so a failed create leaves no container. Faults live in memory only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from emulator.clock import CLOCK
from emulator.errors import BadRequest, EmulatorError
from emulator.manager import watch
from emulator.manager.fault_table import KEEP_HITS, make_fault
from emulator.model.faults import CREATE_KINDS, PROXY_KINDS, Fault, FaultSpec
from emulator.model.records import SandboxRecord, SnapshotRecord
from emulator.model.states import SandboxStatus

if TYPE_CHECKING:
    from emulator.manager.context import ManagerContext

log = logging.getLogger(__name__)
HOLD_STEP_S = 0.2  # how often a held create looks whether it may go on


# ---- create ----------------------------------------------------------------------------------------


def take_create(ctx: ManagerContext, namespace: str, name: str | None, session: str | None) -> Fault | None:
    """The create fault for a new sandbox (matched by namespace, session, name), counted as fired."""
    return ctx.faults.take(CREATE_KINDS, namespace, session, (name,))


async def hold_launch(ctx: ManagerContext, rec: SandboxRecord, fault: Fault) -> bool:
    """What a create fault does to a launch before anything is made; True when the launch goes on.

    create_fail: terminated with the fault's reason. no_capacity: pending (no_resources_available)
    until the reaper ends it at max_pending_secs with "no_capacity", or at once without that bound.
    create_pending: pending with the reason until `hold_secs` pass on the emulator's clock (so a
    clock advance releases it), the fault is deleted, or the sandbox ends.
    """
    if rec.id not in fault.sandboxes:
        fault.sandboxes = [*fault.sandboxes[-(KEEP_HITS - 1):], rec.id]
    if fault.kind == "create_fail":
        reason = fault.reason
        await ctx.terminate(rec, reason, f"Failure({reason})",
                            error_details=fault.message or f"the sandbox failed to start ({reason})")
        return False
    if fault.kind == "no_capacity" and rec.max_pending_secs is None:
        await ctx.terminate(rec, "no_capacity", "Failure(NoCapacity)",
                            error_details=fault.message or "no capacity to place this sandbox")
        return False
    default = "no_resources_available" if fault.kind == "no_capacity" else "scheduling"
    rec.pending_reason = fault.pending_reason or default
    await ctx.table.save(rec)
    until = None if fault.hold_secs is None or fault.kind == "no_capacity" else CLOCK.now_ms() + fault.hold_secs * 1000
    while rec.status == SandboxStatus.pending and not ctx.faults.released(fault):
        if until is not None and CLOCK.now_ms() >= until:
            break
        await asyncio.sleep(HOLD_STEP_S)
    return rec.status == SandboxStatus.pending


# ---- suspend, resume, checkpoint -------------------------------------------------------------------


async def before_transition(ctx: ManagerContext, op: str, rec: SandboxRecord) -> None:
    """Called with the sandbox's lock held, before the dump or restore: sleeps for `<op>_slow`,
    raises EmulatorError(message) for `<op>_fail` (the caller's failure path takes it from there)."""
    fault = ctx.faults.take((f"{op}_fail", f"{op}_slow"), rec.namespace, rec.session_label, (rec.id, rec.name),
                            hit=rec.id)
    if fault is None:
        return
    if fault.kind.endswith("_slow"):
        log.info("fault %s: %s of %s held %.1f s", fault.id, op, rec.id, fault.delay_secs)
        await asyncio.sleep(fault.delay_secs)
        return
    raise EmulatorError(fault.message or f"the {op} of sandbox {rec.id} failed")


async def checkpoint_failed(ctx: ManagerContext, rec: SandboxRecord, snap: SnapshotRecord) -> bool:
    """`before_transition` for a checkpoint: True (and the snapshot recorded `failed` with the
    message, which the SDK's checkpoint() raises as SandboxError) when a checkpoint_fail fault acted."""
    try:
        await before_transition(ctx, "checkpoint", rec)
    except EmulatorError as exc:
        snap.status, snap.error = "failed", exc.message
        await ctx.checkpoints.store.save_snapshot(snap)
        return True
    return False


# ---- proxy -----------------------------------------------------------------------------------------


def take_proxy(ctx: ManagerContext, sandbox_id: str, method: str, path: str) -> Fault | None:
    """The proxy fault for a request to a sandbox (routed already), counted as fired."""
    if not ctx.faults.all():
        return None  # the common case: no lookup at all
    rec = ctx.table.get(sandbox_id)
    if rec is None:
        return None
    return ctx.faults.take(PROXY_KINDS, rec.namespace, rec.session_label, (rec.id, rec.name), method, path,
                            hit=rec.id)


# ---- OOM -------------------------------------------------------------------------------------------


async def oom_kill(ctx: ManagerContext, fault: Fault) -> list[str]:
    """Kill the running sandboxes in the fault's scope (at most `count`) as the OOM killer would:
    terminated with the reason and details the exit watch records for a real OOM kill."""
    if fault.namespace is None and fault.session is None and fault.sandbox is None:
        raise BadRequest("oom_kill needs a scope: namespace, session or sandbox")
    killed: list[str] = []
    for rec in list(ctx.table):
        if fault.count is not None and len(killed) >= fault.count:
            break
        if (rec.status != SandboxStatus.running or (fault.namespace and rec.namespace != fault.namespace)
                or (fault.session and rec.session_label != fault.session)
                or (fault.sandbox and fault.sandbox not in (rec.id, rec.name))):
            continue
        async with ctx.table.lock(rec.id):
            if rec.status != SandboxStatus.running:
                continue
            reason, detail = watch.oom_cause(rec)
            log.warning("fault %s: sandbox %s killed as if out of memory", fault.id, rec.id)
            await ctx.terminate(rec, reason, f"Failure({reason})", error_details=detail)
        killed.append(rec.id)
    fault.fired, fault.sandboxes = len(killed), killed[-KEEP_HITS:]
    return killed


class FaultControl:
    """The faults of one manager, for the API (`/emulator/faults`) and the proxy."""

    def __init__(self, ctx: ManagerContext) -> None:
        self._ctx = ctx

    async def inject(self, spec: FaultSpec) -> Fault:
        """Put a fault in force; an oom_kill acts at once (on the running sandboxes in its scope) and is
        not kept. Raises BadRequest (oom_kill without a scope, too many faults)."""
        if spec.kind == "oom_kill":
            fault = make_fault(spec)
            await oom_kill(self._ctx, fault)
            return fault
        return self._ctx.faults.add(spec)

    def all(self) -> list[Fault]:
        return self._ctx.faults.all()

    def delete(self, fault_id: str) -> Fault:
        """Raises NotFound. A create the fault holds pending goes on."""
        return self._ctx.faults.remove(fault_id)

    def delete_scope(self, namespace: str | None, session: str | None) -> list[str]:
        return self._ctx.faults.remove_scope(namespace, session)

    def for_proxy(self, sandbox_id: str, method: str, path: str) -> Fault | None:
        """The fault for a proxied request (counted as fired), or None."""
        return take_proxy(self._ctx, sandbox_id, method, path)

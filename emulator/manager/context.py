"""What the manager's parts share: settings, the tables, the engine, the agents and the checkpoint engine."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emulator.agent_client import AgentClients
from emulator.backend import egress_host
from emulator.backend.base import EngineInfo, RuntimeBackend
from emulator.checkpoints.engine import CheckpointEngine
from emulator.config import Settings
from emulator.errors import EmulatorError, NotFound
from emulator.labels import instance_label
from emulator.manager.fault_table import FaultTable
from emulator.manager.pool_table import PoolTable
from emulator.manager.run_dirs import RunDirs
from emulator.manager.table import SandboxTable
from emulator.manager.tasks import TaskSet
from emulator.model.records import SandboxRecord, now_ms
from emulator.model.runtimes import RUNSC_NETSTACK, gvisor_open
from emulator.model.states import SandboxStatus

if TYPE_CHECKING:
    from emulator.manager.file_systems import FileSystems

log = logging.getLogger("emulator.manager")


@dataclass
class ManagerContext:
    settings: Settings
    table: SandboxTable
    backend: RuntimeBackend
    agents: AgentClients
    checkpoints: CheckpointEngine
    run_dirs: RunDirs
    pools: PoolTable
    tasks: TaskSet = field(default_factory=TaskSet)
    faults: FaultTable = field(default_factory=FaultTable)  # injected faults (manager/faults.py)
    engine: EngineInfo | None = None
    # why the last suspend or resume of a sandbox failed, read once by the API
    transition_errors: dict[str, str] = field(default_factory=dict)
    reap_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one deadline pass at a time
    file_systems: FileSystems | None = None  # set by the manager once made (it needs this context)

    def set_deadline(self, rec: SandboxRecord) -> None:
        """A running sandbox's deadline: now + timeout_secs (ms), or none."""
        rec.deadline_ms = now_ms() + rec.timeout_secs * 1000 if rec.timeout_secs else None

    async def terminate(self, rec: SandboxRecord, reason: str, outcome: str,
                        error_details: str | None = None) -> None:
        """End a sandbox: record first (so a crash mid-way is reconciled), then remove the container,
        its suspend dump and its run folder. A no-op for a terminated sandbox."""
        if not rec.live:
            return
        await self.table.move(rec, SandboxStatus.terminated, termination_reason=reason, outcome=outcome,
                              error_details=error_details)
        await self.agents.close(rec.id)
        if rec.container_id:
            await self.backend.remove(rec.container_id)
            if rec.restored_from is not None and not self._snapshot_kept(rec):
                # Its container ran a deleted snapshot's image (a copy's transient one, say), which Docker
                # kept untagged while the container used it: nothing else would remove it now.
                await self.backend.prune_dangling_ours()
        await self.drop_host_rules(rec)
        if rec.suspend_checkpoint:
            await self.checkpoints.discard_suspend(rec)
        self.run_dirs.remove(rec.id)

    async def drop_host_rules(self, rec: SandboxRecord) -> None:
        """Remove the host-side egress chain of a sandbox on gVisor's own network stack with a restricting
        policy (manager/egress.py), once its container no longer runs on its address: another container may
        get that address next. Failures are logged (the start-up sweep removes what is left)."""
        if rec.docker_runtime != RUNSC_NETSTACK or gvisor_open(rec.network_policy) or egress_host.unavailable():
            return
        try:
            await egress_host.remove(instance_label(self.settings.data_dir), rec.id)
        except EmulatorError as exc:
            log.warning("sandbox %s: could not remove its host egress chain: %s", rec.id, exc.message)

    def _snapshot_kept(self, rec: SandboxRecord) -> bool:
        try:
            self.checkpoints.get_snapshot(rec.namespace, rec.restored_from or "")
        except NotFound:
            return False
        return True

    async def mark_lost(self, rec: SandboxRecord, reason: str, details: str) -> None:
        """A sandbox whose container is gone or stopped: terminated with `Failure(reason)`."""
        await self.table.move(rec, SandboxStatus.terminated, termination_reason=reason,
                              outcome=f"Failure({reason})", error_details=details)
        await self.drop_host_rules(rec)
        self.run_dirs.remove(rec.id)

"""`runsc`: gVisor's own checkpoint and restore, through Docker's checkpoint API, for gVisor sandboxes under
the Docker runtimes `runsc-nonet` (no internet access: --network=none) and `runsc-netstack` (internet access,
no egress rules: gVisor's own network stack, --network=sandbox --net-disconnect-ok; docs/gvisor.md).

Why not for every gVisor sandbox: where the host cannot enforce egress rules (allow_out / deny_out) itself
(backend/egress_host.py: no br_netfilter), a sandbox with rules runs with host networking, so that the iptables
rules in its namespace see its traffic (gVisor's own stack sends raw frames past them), and runsc refuses to
checkpoint with host networking ("checkpoint not supported when using hostinet").

Open TCP connections of a runsc-netstack sandbox do not survive a dump: runsc refuses to save a connected
endpoint unless --net-disconnect-ok, and with it drops them (the process gets an error on its next read or
write); listening sockets and new connections after a restore work.

The agent's socket: with --host-uds=create the agent's listening socket is a host socket, and runsc
cannot save one ("Cannot save endpoint with bound host socket"). The agent closes its listener on SIGUSR2
and binds it again on the next SIGUSR2 (agent/main.go), so every dump is wrapped: SIGUSR2 (close), dump,
and SIGUSR2 again where the agent runs on (after a snapshot, after a restore). The proxy's connections to
the agent are closed by the manager before any dump, as for CRIU.

Dumps are gVisor's state file (`checkpoint.img`) in Docker's checkpoint folder of the container; a snapshot's
is moved to the snapshot's folder, and a restore into a new container copies it back (with a nonce file:
containerd refuses an upload identical to one it still holds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path

from emulator.backend.base import RuntimeBackend
from emulator.checkpoints.containerd_leftovers import NONCE_FILE
from emulator.checkpoints.mechanisms import DockerMechanism, link_or_copy_tree, move_tree
from emulator.errors import EmulatorError, SnapshotFailed
from emulator.model.runtimes import GVISOR_CHECKPOINTABLE

TOGGLE = "SIGUSR2"  # the agent's listener: close / bind again (agent/main.go)
# runsc's words when the agent's listener was not closed yet (the signal is asynchronous)
_STILL_BOUND = "bound host socket"
DUMP_MARKER = "checkpoint.img"
# why no gVisor sandbox can be checkpointed here (answered in a 400)
GVISOR_OFF = ("Docker has neither the 'runsc-nonet' nor the 'runsc-netstack' runtime (emulator/setup/gvisor-install.sh "
              "registers them), or checkpoints are off (TLE_CHECKPOINT=off, or dockerd not experimental)")
# why a gVisor sandbox under host networking cannot be checkpointed here (answered in a 400)
GVISOR_NO_CHECKPOINT = (
    "a gVisor sandbox with egress rules (allow_out / deny_out) runs with host networking where the host cannot "
    "enforce its rules outside the container (no br_netfilter: emulator/backend/egress_host.py), so that the iptables "
    "rules in its namespace see its traffic, and runsc refuses to checkpoint a sandbox using host networking "
    "('checkpoint not supported when using hostinet'); gVisor sandboxes without egress rules (with or without "
    "internet access) run on gVisor's own network stack or none and can be checkpointed (where Docker has the "
    "runsc-netstack / runsc-nonet runtimes of emulator/setup/gvisor-install.sh), or use runc (no image suffix, "
    "or +runc); filesystem snapshots work")


class GvisorMechanism(DockerMechanism):
    """Docker's checkpoint API on runsc-nonet and runsc-netstack containers, with the agent's listener closed
    around it. `runtimes`: those of GVISOR_CHECKPOINTABLE that Docker has."""

    name = "runsc"
    marker = DUMP_MARKER

    def __init__(self, backend: RuntimeBackend, docker_root: Path, runtimes: Collection[str] = GVISOR_CHECKPOINTABLE
                 ) -> None:
        super().__init__(backend, docker_root)
        self.runtimes = tuple(r for r in GVISOR_CHECKPOINTABLE if r in runtimes)

    async def _quiet(self, container_id: str) -> None:
        await self.backend.signal(container_id, TOGGLE)

    async def relisten(self, container_id: str) -> None:
        """Have the agent bind its socket again (after a dump it survived, or a restore)."""
        await self.backend.signal(container_id, TOGGLE)

    async def _checkpoint(self, container_id: str, name: str, leave_running: bool) -> None:
        """The dump, retried while the agent has not yet closed its listener. Raises SnapshotFailed."""
        last = ""
        for delay in (0.05, 0.1, 0.2, 0.4, 0.8):
            await asyncio.sleep(delay)
            try:
                await self.backend.checkpoint(container_id, name, leave_running=leave_running)
                return
            except EmulatorError as exc:
                last = exc.message
                await self.backend.delete_checkpoint(container_id, name)
                if _STILL_BOUND not in last:
                    break
        raise SnapshotFailed(f"gVisor could not checkpoint the sandbox: {last}")

    async def dump_stop(self, container_id: str, name: str) -> None:
        await self.backend.delete_checkpoint(container_id, name)
        await self._quiet(container_id)
        try:
            await self._checkpoint(container_id, name, leave_running=False)
        except EmulatorError:
            await self.relisten(container_id)  # still running: the agent serves again
            raise

    async def restore_in_place(self, container_id: str, name: str) -> None:
        await self._wait_stopped(container_id)
        await asyncio.to_thread(self._make_unique, container_id, name)
        try:
            await self.backend.start_from_checkpoint(container_id, name)
        finally:
            await self.backend.delete_checkpoint(container_id, name)
        await self.relisten(container_id)

    async def before_dump(self, container_id: str) -> None:
        """Before the engine freezes a running sandbox for a snapshot: the agent closes its listener."""
        await self._quiet(container_id)

    async def after_dump(self, container_id: str) -> None:
        """After the engine thawed it again: the agent binds its socket again."""
        await self.relisten(container_id)

    async def dump_running(self, container_id: str, name: str, dest: Path) -> None:
        await self.backend.delete_checkpoint(container_id, name)
        await self._checkpoint(container_id, name, leave_running=True)
        await asyncio.to_thread(_move, self.checkpoint_dir(container_id, name), dest)

    async def restore_new(self, container_id: str, name: str, src: Path) -> None:
        if not (src / DUMP_MARKER).is_file():
            raise EmulatorError(f"restore failed: the gVisor dump in {src} is missing")
        await asyncio.to_thread(link_or_copy_tree, src, self.checkpoint_dir(container_id, name))
        await asyncio.to_thread(self._make_unique, container_id, name)
        try:
            await self.backend.start_from_checkpoint(container_id, name)
        finally:
            await self.backend.delete_checkpoint(container_id, name)
        await self.relisten(container_id)

    async def thaw(self, container_ids: list[str]) -> None:
        pass  # no CRIU freezer here; Docker's paused containers are unpaused by the engine

    async def freeze(self, container_id: str) -> None:
        pass


def _move(src: Path, dst: Path) -> None:
    move_tree(src, dst)
    (dst / NONCE_FILE).unlink(missing_ok=True)

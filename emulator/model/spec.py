"""SandboxSpec: every option of a sandbox create, once (docs/protocol.md §6.1, the SDK's `Sandbox.create`).

The wire layer turns a request into a spec; the manager resolves it onto a base (a snapshot's
options or the emulator's defaults) with `resolve()`. Adding a create option is one field here and
one in the wire model (and, if a running sandbox keeps it, one in `SandboxOptions`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from emulator.model.records import SandboxOptions


class SandboxSpec(BaseModel):
    """What a create asks for; None means "not given" (inherit from the snapshot or the default)."""

    model_config = ConfigDict(frozen=True)

    image: str | None = None
    cpus: float | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    timeout_secs: int | None = None
    entrypoint: list[str] | None = None
    network_policy: dict[str, Any] | None = None
    exposed_ports: list[int] | None = None
    allow_unauthenticated_access: bool | None = None
    name: str | None = None
    auto_resume: bool | None = None
    max_pending_secs: int | None = None
    snapshot_id: str | None = None
    session_label: str | None = None
    # room for what pools, file systems and runtimes add
    pool_id: str | None = None
    file_systems: list[dict[str, Any]] | None = None
    runtime: str | None = None

    def resolve(self, base: SandboxOptions) -> dict[str, Any]:
        """The option fields: this spec's value where given, else the base's."""
        resolved = base.options()
        for key in resolved:
            value = getattr(self, key)
            if value is not None:
                resolved[key] = value
        return resolved

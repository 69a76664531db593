"""Injected faults (issue 17, docs/controls.md "Faults"): what a test asks to go wrong, and where.

A fault has a kind (the point of use it acts at and how), a scope (namespace, session label, one
sandbox by id or name; all optional and combined) and an optional count (it acts on that many calls,
then goes). The checks themselves live in manager/faults.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FaultKind = Literal[
    "create_pending",  # a create stays pending with `pending_reason` (for `hold_secs`, or until the fault is deleted)
    "create_fail",  # a create ends terminated with `reason` and `message`, before any container is made
    "no_capacity",  # pending (no_resources_available) until max_pending_secs, then terminated "no_capacity"
    "suspend_fail", "resume_fail", "checkpoint_fail",  # the operation fails with `message`
    "suspend_slow", "resume_slow", "checkpoint_slow",  # the operation starts `delay_secs` late
    "proxy_error",  # the proxy answers `status` (502, 503, 504, 429 or 500) without forwarding
    "proxy_cut",  # the proxy forwards, then cuts the answer after `after_bytes` bytes of body
    "oom_kill",  # the running sandboxes in scope die at once as if killed by the OOM killer
]

CREATE_KINDS = ("create_pending", "create_fail", "no_capacity")
PROXY_KINDS = ("proxy_error", "proxy_cut")
TRANSITIONS = ("suspend", "resume", "checkpoint")
REASON = r"^[A-Za-z0-9_.()-]{1,64}$"


class FaultSpec(BaseModel):
    """The body of `POST /emulator/faults`; fields that do not apply to the kind are ignored."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    namespace: str | None = Field(None, max_length=128)
    session: str | None = Field(None, max_length=128)
    sandbox: str | None = Field(None, max_length=128)  # a sandbox id or name
    count: int | None = Field(None, ge=1, le=1_000_000)  # acts on this many calls, then goes; None: until deleted
    pending_reason: str | None = Field(None, pattern=REASON)  # create_pending (scheduling), no_capacity
    hold_secs: float | None = Field(None, gt=0, le=86_400)  # create_pending: then the launch goes on
    reason: str = Field("StartupError", pattern=REASON)  # create_fail's termination_reason
    message: str | None = Field(None, max_length=1000)
    delay_secs: float = Field(5.0, gt=0, le=600)  # *_slow
    status: Literal[429, 500, 502, 503, 504] = 503  # proxy_error
    after_bytes: int = Field(0, ge=0, le=1 << 30)  # proxy_cut
    path: str | None = Field(None, max_length=500)  # proxy kinds: only paths containing this
    method: str | None = Field(None, max_length=16)  # proxy kinds: only this HTTP method


# The fields each kind reads besides the scope; the others are left out of its wire shape.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "create_pending": ("pending_reason", "hold_secs"),
    "create_fail": ("reason", "message"),
    "no_capacity": ("pending_reason",),
    **{f"{t}_fail": ("message",) for t in TRANSITIONS},
    **{f"{t}_slow": ("delay_secs",) for t in TRANSITIONS},
    "proxy_error": ("status", "path", "method"),
    "proxy_cut": ("after_bytes", "path", "method"),
    "oom_kill": (),
}
COMMON_FIELDS = ("id", "kind", "namespace", "session", "sandbox", "count", "created_ms", "fired", "sandboxes")


class Fault(FaultSpec):
    """A fault in force: its id, when it was made (epoch ms), how often it acted and on which sandboxes."""

    id: str
    created_ms: int
    fired: int = 0
    sandboxes: list[str] = Field(default_factory=list)  # the sandboxes it acted on (the last 100)

    def wire(self) -> dict[str, object]:
        """The JSON shape of `/emulator/faults`: the scope, the counters and the fields of its kind only."""
        return self.model_dump(include=set(COMMON_FIELDS + KIND_FIELDS[self.kind]))

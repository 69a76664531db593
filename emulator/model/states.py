"""The sandbox state machine: the status enum and the one table of legal transitions (docs/protocol.md §11).

`SandboxRecord.move_to()` is the only place a status changes; it refuses a move this table does
not hold with `IllegalTransition` (a 409 INVALID_STATE on the wire).
"""

from __future__ import annotations

from enum import Enum

from emulator.errors import InvalidState


class SandboxStatus(str, Enum):
    """The SDK's `SandboxStatus` values. Member names equal values, so `status == "running"` and
    `status in {"running", ...}` work on plain strings too (an Enum hashes by name)."""

    pending = "pending"
    running = "running"
    snapshotting = "snapshotting"
    suspending = "suspending"
    suspended = "suspended"
    terminated = "terminated"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


S = SandboxStatus

# from -> the statuses it may move to, with why each exists
TRANSITIONS: dict[SandboxStatus, frozenset[SandboxStatus]] = {
    # started; resume that failed goes back to suspended (its dump is kept); create or launch failed
    S.pending: frozenset({S.running, S.suspended, S.terminated}),
    S.running: frozenset({S.suspending, S.snapshotting, S.terminated}),
    # dumped; dump failed and it keeps running; terminated while dumping
    S.suspending: frozenset({S.suspended, S.running, S.terminated}),
    # resume starts (pending until the agent answers); a resume whose last write a crash lost (reconcile)
    S.suspended: frozenset({S.pending, S.running, S.terminated}),
    S.snapshotting: frozenset({S.running, S.terminated}),
    S.terminated: frozenset(),
}


class IllegalTransition(InvalidState):
    """A move the transition table does not hold (409 INVALID_STATE)."""


def check_transition(current: SandboxStatus, target: SandboxStatus, sandbox_id: str) -> None:
    """Raise IllegalTransition unless `current -> target` is in TRANSITIONS."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"Sandbox {sandbox_id} cannot go from {current} to {target}")

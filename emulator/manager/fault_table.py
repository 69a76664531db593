"""The table of injected faults in force (issue 17); the checks that consult it are in manager/faults.py."""

from __future__ import annotations

import uuid

from emulator.clock import CLOCK
from emulator.errors import BadRequest, NotFound
from emulator.model.faults import Fault, FaultSpec

MAX_FAULTS = 1000
KEEP_HITS = 100  # sandbox ids a fault remembers acting on


def make_fault(spec: FaultSpec) -> Fault:
    """A fault with a new id, made now (the emulator's clock)."""
    return Fault(**spec.model_dump(), id=f"flt_{uuid.uuid4().hex[:12]}", created_ms=CLOCK.now_ms())


class FaultTable:
    """The faults in force, oldest first. Only the event loop's thread touches it, so a match and
    its count going down happen with no await between them (two calls never take the last one)."""

    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}
        self._released: set[str] = set()  # deleted faults: their held creates go on

    def add(self, spec: FaultSpec) -> Fault:
        if len(self._faults) >= MAX_FAULTS:
            raise BadRequest(f"At most {MAX_FAULTS} faults at once; delete some first")
        fault = make_fault(spec)
        self._faults[fault.id] = fault
        return fault

    def all(self) -> list[Fault]:
        return list(self._faults.values())

    def remove(self, fault_id: str) -> Fault:
        """Delete a fault (NotFound when unknown); a create it holds pending goes on."""
        fault = self._faults.pop(fault_id, None)
        if fault is None:
            raise NotFound(f"Fault {fault_id} not found")
        self._released.add(fault_id)
        return fault

    def remove_scope(self, namespace: str | None, session: str | None) -> list[str]:
        """Delete the faults made for that namespace and/or session (None, None: every fault)."""
        ids = [f.id for f in self._faults.values()
               if (namespace is None or f.namespace == namespace) and (session is None or f.session == session)]
        for fault_id in ids:
            self.remove(fault_id)
        return ids

    def released(self, fault: Fault) -> bool:
        return fault.id in self._released

    def take(self, kinds: tuple[str, ...], namespace: str, session: str | None, idents: tuple[str | None, ...],
             method: str | None = None, path: str | None = None, hit: str | None = None) -> Fault | None:
        """The oldest fault of one of `kinds` whose scope matches, counted as fired (on sandbox `hit`);
        None when none does."""
        for fault in self._faults.values():
            if (fault.kind in kinds and (fault.namespace is None or fault.namespace == namespace)
                    and (fault.session is None or fault.session == session)
                    and (fault.sandbox is None or fault.sandbox in idents)
                    and (fault.method is None or method is None or fault.method.upper() == method.upper())
                    and (fault.path is None or path is None or fault.path in path)):
                self._fire(fault, hit)
                return fault
        return None

    def _fire(self, fault: Fault, sandbox_id: str | None) -> None:
        fault.fired += 1
        if sandbox_id:
            fault.sandboxes = [*fault.sandboxes[-(KEEP_HITS - 1):], sandbox_id]
        if fault.count is not None and fault.fired >= fault.count:
            self._faults.pop(fault.id, None)  # used up; a create it holds stays held (not released)

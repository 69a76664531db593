"""The sandbox state machine and the spec (emulator/model), without Docker."""

from __future__ import annotations

import itertools

import pytest

from emulator.api.wire import CreateSandboxRequest
from emulator.errors import InvalidState
from emulator.model.records import SandboxOptions, SandboxRecord, SnapshotRecord
from emulator.model.spec import SandboxSpec
from emulator.model.states import TRANSITIONS, IllegalTransition, SandboxStatus

S = SandboxStatus
ALL_PAIRS = list(itertools.product(S, S))


def _rec(status: SandboxStatus) -> SandboxRecord:
    return SandboxRecord(id="sb1", namespace="default", image="img", status=status)


@pytest.mark.parametrize("current, target", [p for p in ALL_PAIRS if p[1] in TRANSITIONS[p[0]]])
def test_every_legal_move_is_taken(current: SandboxStatus, target: SandboxStatus) -> None:
    rec = _rec(current)
    rec.move_to(target, now=1234)
    assert rec.status == target


@pytest.mark.parametrize("current, target", [p for p in ALL_PAIRS if p[1] not in TRANSITIONS[p[0]]])
def test_every_illegal_move_is_refused(current: SandboxStatus, target: SandboxStatus) -> None:
    rec = _rec(current)
    with pytest.raises(IllegalTransition) as err:
        rec.move_to(target)
    assert isinstance(err.value, InvalidState) and err.value.status == 409
    assert rec.status == current


def test_terminated_is_final_and_every_state_can_end() -> None:
    assert TRANSITIONS[S.terminated] == frozenset()
    assert all(S.terminated in TRANSITIONS[s] for s in S if s != S.terminated)


def test_moves_stamp_times() -> None:
    rec = _rec(S.pending)
    rec.deadline_ms = 99
    rec.move_to(S.running, now=1000)
    assert (rec.started_at, rec.pending_reason) == (1000, None)
    rec.move_to(S.suspending, now=2000)
    rec.move_to(S.suspended, now=3000)
    assert rec.deadline_ms is None and rec.started_at == 1000
    rec.move_to(S.pending, now=4000)
    rec.move_to(S.running, now=5000)
    assert rec.started_at == 1000  # the first start stays
    rec.move_to(S.terminated, now=6000)
    assert rec.terminated_at == 6000


def test_status_reads_as_its_string() -> None:
    assert S.running == "running" and "running" in {S.running} and S.running in {"running"}
    assert f"{S.suspended}" == "suspended" and str(S.pending) == "pending"
    assert _rec(S.running).model_dump(mode="json")["status"] == "running"
    assert SandboxRecord.model_validate_json(_rec(S.running).model_dump_json()).status is S.running


def test_spec_holds_every_option_once() -> None:
    assert set(SandboxOptions.model_fields) <= set(SandboxSpec.model_fields)


def test_spec_resolves_onto_a_snapshot_and_defaults() -> None:
    snap = SnapshotRecord(id="snap_1", namespace="d", sandbox_id="s", base_image="img", cpus=2.0, memory_mb=512,
                          timeout_secs=30, exposed_ports=[8080])
    resolved = SandboxSpec(cpus=1.0, entrypoint=["x"]).resolve(snap)
    assert resolved == {**snap.options(), "cpus": 1.0, "entrypoint": ["x"]}
    assert SandboxSpec().resolve(SandboxOptions(disk_mb=5)) == {**SandboxOptions().options(), "disk_mb": 5}


def test_wire_request_becomes_a_spec_once() -> None:
    req = CreateSandboxRequest.model_validate({
        "image": "i", "resources": {"cpus": 0.5, "memory_mb": 256, "disk_mb": 100}, "timeout_secs": 5,
        "entrypoint": ["a"], "network": {"allow_internet_access": False}, "name": "n", "auto_resume": False,
        "exposed_ports": [80], "allow_unauthenticated_access": True, "max_pending_secs": 9, "snapshot_id": "s"})
    spec = req.to_spec("sess")
    assert (spec.image, spec.cpus, spec.memory_mb, spec.disk_mb, spec.timeout_secs) == ("i", 0.5, 256, 100, 5)
    assert spec.network_policy == {"allow_internet_access": False, "allow_out": [], "deny_out": []}
    assert (spec.name, spec.auto_resume, spec.exposed_ports, spec.allow_unauthenticated_access) == \
        ("n", False, [80], True)
    assert (spec.max_pending_secs, spec.snapshot_id, spec.session_label) == (9, "s", "sess")

"""The table of injected faults (emulator/manager/fault_table.py): scope matching, counts, release."""

from __future__ import annotations

from typing import get_args

import pytest
from pydantic import ValidationError

from emulator.errors import NotFound
from emulator.manager.fault_table import FaultTable
from emulator.model.faults import CREATE_KINDS, KIND_FIELDS, PROXY_KINDS, Fault, FaultKind, FaultSpec


def test_scope_fields_combine_and_the_oldest_match_wins() -> None:
    table = FaultTable()
    a = table.add(FaultSpec(kind="proxy_error", namespace="ns", sandbox="sb1", path="/api/v1/files"))
    b = table.add(FaultSpec(kind="proxy_error", namespace="ns"))
    assert table.take(PROXY_KINDS, "other", None, ("sb1",), "GET", "/api/v1/files") is None
    assert table.take(PROXY_KINDS, "ns", None, ("sb2",), "GET", "/api/v1/files") is b
    assert table.take(PROXY_KINDS, "ns", None, ("sb1", "name"), "PUT", "/api/v1/files?path=/x", hit="sb1") is a
    assert a.fired == 1 and a.sandboxes == ["sb1"]
    assert table.take(CREATE_KINDS, "ns", None, (None,)) is None  # other kinds never match


def test_session_and_method_filters() -> None:
    table = FaultTable()
    f = table.add(FaultSpec(kind="proxy_cut", session="s1", method="post"))
    assert table.take(PROXY_KINDS, "ns", "s2", ("x",), "POST", "/") is None
    assert table.take(PROXY_KINDS, "ns", "s1", ("x",), "GET", "/") is None
    assert table.take(PROXY_KINDS, "ns", "s1", ("x",), "POST", "/") is f


def test_count_uses_a_fault_up_without_releasing_what_it_holds() -> None:
    table = FaultTable()
    f = table.add(FaultSpec(kind="create_pending", count=2))
    assert table.take(CREATE_KINDS, "ns", None, (None,)) is f
    assert table.take(CREATE_KINDS, "ns", None, (None,)) is f
    assert table.take(CREATE_KINDS, "ns", None, (None,)) is None
    assert table.all() == [] and not table.released(f)


def test_delete_releases_and_scope_delete_takes_exact_scopes() -> None:
    table = FaultTable()
    f = table.add(FaultSpec(kind="create_pending", namespace="a"))
    g = table.add(FaultSpec(kind="create_pending", namespace="b", session="s"))
    table.remove(f.id)
    assert table.released(f)
    with pytest.raises(NotFound):
        table.remove(f.id)
    assert table.remove_scope("a", None) == []
    assert table.remove_scope(None, "s") == [g.id] and table.all() == []


def test_bad_specs_are_refused() -> None:
    for bad in ({"kind": "meteor"}, {"kind": "proxy_error", "status": 418}, {"kind": "create_fail", "count": 0},
                {"kind": "create_fail", "reason": "has space"}, {"kind": "suspend_slow", "delay_secs": 0},
                {"kind": "create_pending", "surprise": 1}):
        with pytest.raises(ValidationError):
            FaultSpec.model_validate(bad)


def test_a_faults_wire_shape_has_the_fields_of_its_kind_only() -> None:
    oom = Fault(id="f1", created_ms=1, kind="oom_kill", sandbox="sb")
    assert set(oom.wire()) == {"id", "kind", "namespace", "session", "sandbox", "count", "created_ms", "fired",
                               "sandboxes"}
    err = Fault(id="f2", created_ms=1, kind="proxy_error", status=502, path="/files").wire()
    assert (err["status"], err["path"], err["method"]) == (502, "/files", None) and "delay_secs" not in err
    slow = Fault(id="f3", created_ms=1, kind="resume_slow", delay_secs=2.5).wire()
    assert slow["delay_secs"] == 2.5 and "reason" not in slow and "message" not in slow
    assert set(KIND_FIELDS) == set(get_args(FaultKind))  # every kind has its fields named

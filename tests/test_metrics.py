"""Prometheus metrics at /metrics (issue 17): operations of the real SDK counted and timed."""

from __future__ import annotations

import json
import urllib.request
import uuid

from prometheus_client.parser import text_string_to_metric_families
from tensorlake.sandbox import CheckpointType, Sandbox

from sdk_shim.launcher import EmulatorProcess

T = 60.0
W = 60.0


def _scrape(api_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{api_url}/metrics", timeout=30) as r:
        assert r.headers["content-type"].startswith("text/plain; version=")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_operations_requests_states_and_dump_sizes(emulator: EmulatorProcess) -> None:
    url = emulator.api_url
    with urllib.request.urlopen(f"{url}/emulator/capabilities", timeout=30) as r:
        memory = json.loads(r.read())["checkpoints"]["memory_snapshots"]
    print(f"memory checkpoints: {memory}")
    before = _scrape(url)
    sb = Sandbox.create(name=f"m-{uuid.uuid4().hex[:8]}", cpus=1.0, memory_mb=256, request_timeout=T)
    copies: list[Sandbox] = []
    try:
        assert sb.run("echo", ["x"]).stdout.strip() == "x"
        kind = CheckpointType.MEMORY if memory else CheckpointType.FILESYSTEM
        snap = sb.checkpoint(timeout=W, checkpoint_type=kind)
        assert snap is not None
        copies.append(Sandbox.create(snapshot_id=snap.snapshot_id, request_timeout=T))
        if memory:
            sb.suspend(timeout=W)
            sb.resume(timeout=W)
        during = _scrape(url)
        assert during[("tle_sandboxes", (("state", "running"),))] >= 2
        assert during[("tle_snapshots", (("status", "completed"),))] >= 1
        assert during[("tle_snapshot_bytes", ())] > 0
        assert ("tle_clock_offset_seconds", ()) in during
        Sandbox.delete_snapshot(snap.snapshot_id, request_timeout=T)
    finally:
        for s in (sb, *copies):
            s.terminate()
    after = _scrape(url)
    ops = ["create", "restore", "checkpoint"] + (["suspend", "resume"] if memory else [])
    for op in ops:
        assert _delta(before, after, "tle_operations_total", operation=op, outcome="success") == 1, op
        assert _delta(before, after, "tle_operation_duration_seconds_count", operation=op) == 1, op
        assert _delta(before, after, "tle_operation_duration_seconds_sum", operation=op) > 0, op
    if memory:
        for kind_label in ("suspend", "checkpoint"):
            assert _delta(before, after, "tle_criu_dump_bytes_count", kind=kind_label) == 1
            assert _delta(before, after, "tle_criu_dump_bytes_sum", kind=kind_label) > 64 * 1024
    # The run: a proxied POST; the create: a lifecycle POST answered 200.
    assert _delta(before, after, "tle_http_requests_total", port="proxy", method="POST", status="200") >= 1
    assert _delta(before, after, "tle_http_requests_total", port="api", method="POST", status="200") >= 2
    assert _delta(before, after, "tle_http_request_duration_seconds_count", port="proxy") >= 1

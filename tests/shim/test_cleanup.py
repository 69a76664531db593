"""`tensorlake-emulator cleanup` run as a user runs it: a dry run changes nothing, a running emulator's
sandboxes go through that emulator, and a live session's need --force (issue 16, kind 1)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from shimhelpers import docker_ids, session_leftovers
from test_cli import REQ, cli

from emulator.labels import LABEL_INSTANCE, instance_label
from sdk_shim.docker_sweep import session_selector, sweep
from sdk_shim.launcher import EmulatorProcess, process_start_time
from sdk_shim.sessions import DATA_DIR_MARKER, Session, SessionRecord


@pytest.fixture
def dead_session(tmp_path: Path) -> Iterator[tuple[EmulatorProcess, SessionRecord, Path]]:
    """A session whose pytest died while its emulator (with a sandbox) still runs: what `--stale` reaps."""
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    data_dir = Path(tempfile.mkdtemp(prefix="tle-d-", dir="/tmp"))
    (data_dir / DATA_DIR_MARKER).write_text("dead\n")
    label = f"pytest-dead-{data_dir.name}"
    # No warm reserve: the test compares the containers before and after, and the reserve fills in the background.
    proc = EmulatorProcess(data_dir=data_dir, session_label=label, extra_env={"TLE_WARM_RESERVE": "0"}).start()
    rec = SessionRecord(label=label, pid=999_999_999, pid_start=None, host="x", created_at=0, api_url=proc.api_url,
                        data_dir=str(data_dir), emulator_pid=proc.pid, emulator_start=process_start_time(proc.pid or 0))
    (sessions / f"{label}.json").write_text(json.dumps(rec.__dict__))
    (sessions / f"{label}.lock").write_text("")  # nobody holds it: the session is dead
    yield proc, rec, sessions
    proc.stop()
    sweep(*session_selector(label))
    shutil.rmtree(data_dir, ignore_errors=True)


def _state(proc: EmulatorProcess, rec: SessionRecord, sessions: Path) -> tuple[object, ...]:
    return (session_leftovers(rec.label), sorted(p.name for p in sessions.iterdir()),
            sorted(p.name for p in proc.data_dir.iterdir()), proc.proc is not None and proc.proc.poll() is None)


def test_dry_run_changes_nothing(dead_session) -> None:  # noqa: ANN001
    from tensorlake.sandbox import Sandbox

    proc, rec, sessions = dead_session
    sbx = Sandbox.create(api_url=proc.api_url, request_timeout=REQ)
    before = _state(proc, rec, sessions)
    assert before[0][0] and before[3], "a running sandbox in a running emulator"
    env = {"TLE_SESSIONS_DIR": str(sessions), "TLE_DATA_DIR": str(proc.data_dir)}
    for args in (["--stale"], ["--stale", "--instance"], ["--session", rec.label], []):
        out = cli("cleanup", *args, "--dry-run", env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "would" in out.stdout, out.stdout
        assert _state(proc, rec, sessions) == before, f"cleanup {args} --dry-run changed something"
    assert httpx.get(f"{proc.api_url}/v1/namespaces/default/sandboxes/{sbx.sandbox_id}").json()["status"] == "running"
    # The real run reaps the dead session: its emulator stops, its sandbox, record and folder go.
    out = cli("cleanup", "--stale", env=env)
    assert out.returncode == 0 and "reaped 1 dead session(s)" in out.stdout, out.stdout + out.stderr
    assert proc.proc is not None and proc.proc.wait(60) is not None
    assert session_leftovers(rec.label) == ([], [])
    assert list(sessions.iterdir()) == [] and not proc.data_dir.exists()


def test_cleanup_of_a_running_emulator_goes_through_its_api(own_emulator: EmulatorProcess) -> None:
    from tensorlake.sandbox import CheckpointType, Sandbox

    emu = own_emulator
    sbx = Sandbox.create(api_url=emu.api_url, name="cleanup-me", request_timeout=REQ)
    snap = sbx.checkpoint(checkpoint_type=CheckpointType.FILESYSTEM, timeout=120)
    out = cli("cleanup", env={"TLE_DATA_DIR": str(emu.data_dir)})
    assert out.returncode == 0, out.stdout + out.stderr
    plan = out.stdout.index("will remove")
    assert f"through the running emulator at {emu.api_url}" in out.stdout
    assert plan < out.stdout.index("terminating sandbox"), "the plan is printed before anything is deleted"
    # The emulator's records stay true: terminated, snapshot gone, and the name is free again.
    base = f"{emu.api_url}/v1/namespaces/default"
    assert httpx.get(f"{base}/sandboxes/{sbx.sandbox_id}").json()["status"] == "terminated"
    assert snap.snapshot_id not in {s["id"] for s in httpx.get(f"{base}/snapshots").json()["snapshots"]}
    assert docker_ids("containers", f"{LABEL_INSTANCE}={instance_label(emu.data_dir)}") == []
    again = Sandbox.create(api_url=emu.api_url, name="cleanup-me", request_timeout=REQ)
    assert again.run("true").exit_code == 0
    again.terminate()


def test_cleanup_refuses_a_live_session_without_force(tmp_path: Path) -> None:
    live = Session("pytest-live-111111111111", folder=tmp_path)
    try:
        out = cli("cleanup", "--session", live.record.label, env={"TLE_SESSIONS_DIR": str(tmp_path)})
        assert out.returncode == 1
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "still running" in lines[0] and "--force" in lines[0], out.stderr
        out = cli("cleanup", "--session", live.record.label, "--force", env={"TLE_SESSIONS_DIR": str(tmp_path)})
        assert out.returncode == 0 and "nothing to remove" in out.stdout, out.stdout + out.stderr
    finally:
        live.close()

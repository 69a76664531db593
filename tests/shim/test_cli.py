"""The CLI's inspecting commands: status, list, cleanup (and --help)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from shimhelpers import docker_ids, session_leftovers

from emulator.server import instance_label
from sdk_shim.launcher import EmulatorProcess
from sdk_shim.sessions import DATA_DIR_MARKER, Session, SessionRecord

EXE = Path(sys.executable).parent / "tensorlake-emulator"
REQ = 60.0


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("TLE_", "TENSORLAKE_"))}
    full.update(env or {})
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, env=full, timeout=timeout)


def _create(api_url: str, **kwargs: object):  # noqa: ANN202
    from tensorlake.sandbox import Sandbox

    return Sandbox.create(api_url=api_url, request_timeout=REQ, **kwargs)


def test_help_lists_commands_and_variables() -> None:
    out = cli("--help")
    assert out.returncode == 0
    for word in ("serve", "setup", "status", "list", "cleanup", "TLE_API_PORT", "TLE_DATA_DIR", "TLE_SESSION_LABEL",
                 "TLE_EMULATOR_URL", "TLE_SESSIONS_DIR"):
        assert word in out.stdout, word
    for sub in ("status", "list", "cleanup"):
        assert cli(sub, "--help").returncode == 0


def test_status_reports_engine_criu_images_and_the_emulator(emulator: EmulatorProcess) -> None:
    out = cli("status", "--url", emulator.api_url, "--data-dir", str(emulator.data_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "docker engine" in text and "experimental" in text
    assert "criu " in text
    assert "default image    tensorlake-emulator/sandbox:latest present" in text
    assert "snapshot images" in text and "sandboxes" in text
    assert f"answering at {emulator.api_url}" in text
    assert instance_label(emulator.data_dir) in text
    assert "on disk          state " in text and "snapshots" in text and "containerd restore copies" in text
    # Nothing answering is reported, not an error.
    out = cli("status", "--url", "http://localhost:1")
    assert out.returncode == 0 and "nothing answers at http://localhost:1" in out.stdout


def test_list_shows_sandboxes_and_snapshots(emulator: EmulatorProcess) -> None:
    from tensorlake.sandbox import CheckpointType

    sbx = _create(emulator.api_url, name="cli-list-me")
    try:
        snap = sbx.checkpoint(checkpoint_type=CheckpointType.FILESYSTEM, timeout=120)
        out = cli("list", "--url", emulator.api_url)
        assert out.returncode == 0, out.stderr
        assert sbx.sandbox_id in out.stdout and "cli-list-me" in out.stdout and "running" in out.stdout
        assert snap.snapshot_id in out.stdout
        data = json.loads(cli("list", "--url", emulator.api_url, "--json").stdout)
        assert sbx.sandbox_id in {s["id"] for s in data["default"]["sandboxes"]}
        assert snap.snapshot_id in {s["id"] for s in data["default"]["snapshots"]}
    finally:
        sbx.terminate()
    out = cli("list", "--url", emulator.api_url, "--json")
    assert sbx.sandbox_id not in {s["id"] for s in json.loads(out.stdout)["default"]["sandboxes"]}
    out = cli("list", "--url", emulator.api_url, "--json", "--all")
    assert sbx.sandbox_id in {s["id"] for s in json.loads(out.stdout)["default"]["sandboxes"]}
    from tensorlake.sandbox import Sandbox

    Sandbox.delete_snapshot(snap.snapshot_id, api_url=emulator.api_url, request_timeout=REQ)
    bad = cli("list", "--url", "http://localhost:1")
    assert bad.returncode == 1 and "cannot list" in bad.stderr


@pytest.fixture
def labelled_emulator():  # noqa: ANN201
    data_dir = Path(tempfile.mkdtemp(prefix="tle-c-", dir="/tmp"))
    label = f"cli-test-{os.getpid()}-{data_dir.name}"
    # Sandboxes outlive this emulator, so the cleanup command has something to find.
    # No warm reserve: these tests count the containers of the sandboxes they make (the reserve's own
    # cleanup is test_cleanup_by_session_label_removes_warm_containers).
    proc = EmulatorProcess(data_dir=data_dir, session_label=label,
                           extra_env={"TLE_TERMINATE_ON_EXIT": "0", "TLE_WARM_RESERVE": "0"}).start()
    yield proc, label
    proc.stop()
    from sdk_shim.docker_sweep import session_selector, sweep

    sweep(*session_selector(label))
    shutil.rmtree(data_dir, ignore_errors=True)


def test_cleanup_by_session_label(labelled_emulator) -> None:  # noqa: ANN001
    from tensorlake.sandbox import CheckpointType

    emu, label = labelled_emulator
    sbx = _create(emu.api_url)
    sbx.checkpoint(checkpoint_type=CheckpointType.FILESYSTEM, timeout=120)
    containers, images = session_leftovers(label)
    assert len(containers) == 1 and len(images) == 1
    dry = cli("cleanup", "--session", label, "--dry-run")
    assert dry.returncode == 0 and "would remove container" in dry.stdout and "would remove image" in dry.stdout
    assert session_leftovers(label) == (containers, images)
    out = cli("cleanup", "--session", label)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "removed 1 container(s) and 1 image(s)" in out.stdout
    assert session_leftovers(label) == ([], [])


def test_cleanup_by_session_label_removes_warm_containers() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tle-c-", dir="/tmp"))
    label = f"cli-warm-{os.getpid()}-{data_dir.name}"
    emu = EmulatorProcess(data_dir=data_dir, session_label=label,
                          extra_env={"TLE_TERMINATE_ON_EXIT": "0", "TLE_WARM_RESERVE": "2"}).start()
    try:
        deadline = time.monotonic() + 60
        while len(session_leftovers(label)[0]) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(session_leftovers(label)[0]) == 2, "the warm reserve carries the session label"
        # A crashed emulator leaves its warm containers (a clean stop removes the reserve's itself).
        assert emu.proc is not None
        os.killpg(emu.proc.pid, signal.SIGKILL)
        emu.proc.wait(10)
        emu.proc = None
        out = cli("cleanup", "--session", label)
        assert out.returncode == 0 and "removed 2 container(s)" in out.stdout, out.stdout + out.stderr
        assert session_leftovers(label) == ([], [])
    finally:
        emu.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_cleanup_by_instance_after_the_emulator_stopped(labelled_emulator) -> None:  # noqa: ANN001
    emu, _ = labelled_emulator
    sbx = _create(emu.api_url)
    emu.stop()  # TLE_TERMINATE_ON_EXIT=0: the sandbox stays
    instance = f"dev.tensorlake-emulator.instance={instance_label(emu.data_dir)}"
    assert docker_ids("containers", instance)
    out = cli("cleanup", env={"TLE_DATA_DIR": str(emu.data_dir)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert sbx.sandbox_id in out.stdout
    assert docker_ids("containers", instance) == []


def test_cleanup_stale_reaps_dead_sessions_only(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    # A dead session: a record and a lock nobody holds, and its data folder.
    data_dir = tmp_path / "dead-data"
    data_dir.mkdir()
    (data_dir / DATA_DIR_MARKER).write_text("dead\n")
    dead = SessionRecord(label="pytest-dead-000000000000", pid=999999999, pid_start=None, host="x", created_at=0,
                         data_dir=str(data_dir))
    (sessions / f"{dead.label}.json").write_text(json.dumps(dead.__dict__))
    (sessions / f"{dead.label}.lock").write_text("")
    # A live one: this process holds its lock.
    live = Session("pytest-live-000000000000", folder=sessions)
    try:
        out = cli("cleanup", "--stale", env={"TLE_SESSIONS_DIR": str(sessions)})
        assert out.returncode == 0, out.stdout + out.stderr
        assert "reaped 1 dead session(s)" in out.stdout
        assert not data_dir.exists()
        assert sorted(p.name for p in sessions.iterdir()) == [f"{live.label}.json", f"{live.label}.lock"]
        status = cli("status", "--url", "http://localhost:1", env={"TLE_SESSIONS_DIR": str(sessions)})
        assert "pytest sessions  1 live, 0 dead" in status.stdout
    finally:
        live.close()
    assert list(sessions.iterdir()) == []

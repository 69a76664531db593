"""Test-session records and the reaper that cleans up after sessions that died.

A live test session (one pytest process, or one xdist worker) owns two files in the sessions folder:

- `<label>.lock`, created first and held with an exclusive `flock` for the whole session. The kernel
  drops the lock when the process dies, however it dies (SIGKILL included), so "can I take this
  lock?" is an exact liveness test with no pid-reuse race.
- `<label>.json`, written after the lock is held: what the session started (emulator pid, data
  folder), which emulator it talked to, and (for a reused emulator) the sandboxes and snapshots it
  created.

The reaper looks only at `.json` files. When it can take a session's lock, the owner is gone, and it
removes everything the session made: it stops the session's own emulator if that is still running
(so it terminates its sandboxes), deletes recorded sandboxes and snapshots through a reused
emulator's API, removes the containers and snapshot images that carry the session's label, and
deletes the session's data folder. Then it deletes the record, then the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emulator.config import client_auth_headers
from sdk_shim.launcher import api_healthy, process_start_time

log = logging.getLogger("tensorlake_emulator")
Progress = Callable[[str], None]
# Written into a data folder the plugin created; the reaper deletes only folders that carry it.
DATA_DIR_MARKER = ".tle-pytest-session"


def sessions_dir() -> Path:
    raw = os.environ.get("TLE_SESSIONS_DIR")
    if raw:
        return Path(raw)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "tensorlake-emulator" / "sessions"


def new_label(worker: str | None = None) -> str:
    """A session label: unique per process, readable in `docker ps`, valid as a Docker label value."""
    return f"pytest-{worker or 'main'}-{uuid.uuid4().hex[:12]}"


@dataclass
class SessionRecord:
    label: str
    pid: int
    pid_start: int | None
    host: str
    created_at: float
    mode: str = "started"  # "started": the session ran its own emulator; "reused": it used a running one
    api_url: str = ""  # the emulator the session's sandboxes live in (for "reused", the real one)
    data_dir: str | None = None
    emulator_pid: int | None = None
    emulator_start: int | None = None
    docker_host: str | None = None
    sandboxes: list[list[str]] = field(default_factory=list)  # [namespace, sandbox id]
    snapshots: list[list[str]] = field(default_factory=list)  # [namespace, snapshot id]

    @classmethod
    def load(cls, path: Path) -> SessionRecord:
        data = json.loads(path.read_text())
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class Session:
    """The record of the running test session, with its lock held until close()."""

    def __init__(self, label: str, folder: Path | None = None) -> None:
        self.folder = folder or sessions_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.label = label
        self.lock_path = self.folder / f"{label}.lock"
        self.path = self.folder / f"{label}.json"
        self._mutex = threading.Lock()
        # Python opens files close-on-exec, so a child (the emulator) does not inherit the lock.
        self._lock_file = open(self.lock_path, "a+")  # noqa: SIM115 - held for the session's lifetime
        fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.record = SessionRecord(label=label, pid=os.getpid(), pid_start=process_start_time(os.getpid()),
                                    host=socket.gethostname(), created_at=time.time())
        self.save()

    def save(self) -> None:
        with self._mutex:
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(asdict(self.record), indent=1))
            os.replace(tmp, self.path)

    def update(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.record, key, value)
        self.save()

    def add_sandbox(self, namespace: str, sandbox_id: str) -> None:
        self.record.sandboxes.append([namespace, sandbox_id])
        self.save()

    def add_snapshot(self, namespace: str, snapshot_id: str) -> None:
        self.record.snapshots.append([namespace, snapshot_id])
        self.save()

    def close(self) -> None:
        """The session cleaned up after itself: drop the record, then the lock."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self.lock_path.unlink()
        self._lock_file.close()


# ---- the reaper -------------------------------------------------------------------------------------


def list_records(folder: Path | None = None) -> list[tuple[SessionRecord | None, Path, bool]]:
    """Every record in the folder: (record or None when unreadable, path, alive)."""
    folder = folder or sessions_dir()
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            rec: SessionRecord | None = SessionRecord.load(path)
        except (OSError, ValueError, TypeError):
            rec = None
        out.append((rec, path, _alive(path.with_suffix(".lock"))))
    return out


def _alive(lock_path: Path) -> bool:
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def reap_dead_sessions(folder: Path | None = None, progress: Progress | None = None) -> list[str]:
    """Clean up after every session whose process is gone. Returns the labels reaped."""
    folder = folder or sessions_dir()
    say = progress or log.info
    reaped = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        lock_path = path.with_suffix(".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR)  # never created here: a record without a lock is being removed
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is alive (or another reaper is at it)
            if not path.exists():
                continue
            try:
                rec = SessionRecord.load(path)
            except (OSError, ValueError, TypeError) as exc:
                say(f"[tensorlake-emulator] dropping unreadable session record {path.name}: {exc}")
            else:
                say(f"[tensorlake-emulator] session {rec.label} (pid {rec.pid}) is gone; cleaning up after it")
                reap(rec, say)
                reaped.append(rec.label)
            with contextlib.suppress(OSError):
                path.unlink()
            with contextlib.suppress(OSError):
                lock_path.unlink()
        finally:
            os.close(fd)
    return reaped


def reap(rec: SessionRecord, progress: Progress | None = None) -> None:
    """Remove everything a (dead or finished) session made. Best effort: each step says what it could not do."""
    say = progress or log.info
    if rec.emulator_pid:
        stop_emulator(rec.emulator_pid, rec.emulator_start, say)
    api_ok = False
    if rec.mode == "reused" and rec.api_url:
        api_ok = _delete_through_api(rec, say)
    if rec.mode != "reused" or not api_ok:
        # Our own emulator is stopped, or the reused one does not answer: remove by label directly.
        from sdk_shim.docker_sweep import session_selector, sweep

        try:
            n_c, n_i = sweep(*session_selector(rec.label), host=rec.docker_host, progress=say)
            if n_c or n_i:
                say(f"[tensorlake-emulator] removed {n_c} container(s) and {n_i} image(s) of session {rec.label}")
        except Exception as exc:  # Docker unreachable from here (e.g. a CI container): say so, go on
            say(f"[tensorlake-emulator] could not sweep Docker for session {rec.label}: {exc}")
    if rec.data_dir:
        remove_data_dir(Path(rec.data_dir), say)


def stop_emulator(pid: int, start: int | None, say: Progress, timeout: float = 30.0) -> None:
    """Stop an emulator that a session started, if it still runs. The start time guards against pid reuse."""
    now = process_start_time(pid)
    if now is None or (start is not None and now != start):
        return
    say(f"[tensorlake-emulator] stopping the session's emulator (pid {pid}); it terminates its sandboxes")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_start_time(pid) != now or _is_zombie(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _delete_through_api(rec: SessionRecord, say: Progress) -> bool:
    """Delete the session's snapshots, then its sandboxes, through the emulator. False when it does not answer."""
    import httpx

    base = rec.api_url.rstrip("/")
    if not api_healthy(base, 3.0):
        say(f"[tensorlake-emulator] the emulator at {base} does not answer; removing by label instead")
        return False
    items = [("snapshots", ns, i) for ns, i in rec.snapshots] + [("sandboxes", ns, i) for ns, i in rec.sandboxes]
    with httpx.Client(base_url=base, timeout=60, headers=client_auth_headers()) as http:
        for kind, ns, ident in items:
            try:
                r = http.delete(f"/v1/namespaces/{ns}/{kind}/{ident}")
            except httpx.HTTPError as exc:
                say(f"[tensorlake-emulator] could not delete {kind[:-1]} {ident}: {exc}")
                continue
            if r.is_success:
                say(f"[tensorlake-emulator] deleted {kind[:-1]} {ident}")
            elif r.status_code != 404:
                say(f"[tensorlake-emulator] could not delete {kind[:-1]} {ident}: HTTP {r.status_code}")
    return True


def remove_data_dir(path: Path, say: Progress) -> None:
    if not (path / DATA_DIR_MARKER).exists():
        if path.exists():
            say(f"[tensorlake-emulator] leaving {path}: it is not a data folder the plugin created")
        return
    shutil.rmtree(path, ignore_errors=True)

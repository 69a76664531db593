"""Who owns a data folder: the lock a running emulator holds on it, and how others find that emulator.

`<data dir>/emulator.lock` is held with an exclusive `flock` by the emulator serving that folder, for
its whole life. The kernel drops the lock when the process dies, however it dies, so a second emulator
on the same folder fails at once instead of reconciling the first one's sandboxes away, and "is the
lock free?" is an exact liveness test. The file's content (JSON: pid, api_url, data_dir) says where
the owner answers; `owner_of_instance` finds it from a container's instance label through a small
pointer file per instance under the state folder (`~/.local/state/tensorlake-emulator/emulators/`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from emulator.labels import instance_label

LOCK_NAME = "emulator.lock"


class DataDirLocked(RuntimeError):
    """Another emulator holds the data folder's lock (the message names its pid and URL)."""


@dataclass
class Owner:
    """The running emulator that holds a data folder's lock."""

    data_dir: Path
    pid: int | None
    api_url: str | None


def state_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "tensorlake-emulator" / "emulators"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def owner(data_dir: Path) -> Owner | None:
    """The emulator serving data_dir right now, or None when the folder's lock is free."""
    path = data_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        # A shared lock is refused while the owner holds its exclusive one; it never blocks the owner.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        info = _read(path)
        return Owner(data_dir, info.get("pid"), info.get("api_url"))
    finally:
        os.close(fd)
    return None


def owner_of_instance(instance: str) -> Owner | None:
    """The running emulator whose instance label is `instance`, when it registered its folder here."""
    info = _read(state_dir() / f"{instance}.json")
    return owner(Path(info["data_dir"])) if info.get("data_dir") else None


class DataDirLock:
    """The exclusive lock of one data folder, held from acquire() until release() or process exit."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._file: IO[str] | None = None
        self._pointer = state_dir() / f"{instance_label(data_dir)}.json"

    def acquire(self, api_url: str) -> DataDirLock:
        """Take the lock and say where this emulator answers. Raises DataDirLocked when another holds it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held for the emulator's lifetime; close-on-exec by default
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            other = owner(self.data_dir)
            who = f"pid {other.pid}, {other.api_url}" if other else "another process"
            raise DataDirLocked(f"the data folder {self.data_dir} is in use by another emulator ({who}); "
                                "stop it, or set TLE_DATA_DIR to another folder") from None
        info = {"pid": os.getpid(), "api_url": api_url, "data_dir": str(self.data_dir.resolve())}
        f.seek(0)
        f.truncate()
        f.write(json.dumps(info))
        f.flush()
        self._file = f
        with contextlib.suppress(OSError):
            self._pointer.parent.mkdir(parents=True, exist_ok=True)
            self._pointer.write_text(json.dumps(info))
            _prune_pointers(self._pointer)
        return self

    def release(self) -> None:
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self._pointer.unlink()
        self._file.close()
        self._file = None


def _prune_pointers(keep: Path) -> None:
    """Drop the pointers of emulators that died without releasing (SIGKILL): their folders' locks are free."""
    for path in keep.parent.glob("*.json"):
        info = _read(path)
        if path != keep and (not info.get("data_dir") or owner(Path(info["data_dir"])) is None):
            with contextlib.suppress(OSError):
                path.unlink()

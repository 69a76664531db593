"""The Docker label rules: what the emulator puts on what it makes, and how anyone selects it again.

One module for both Docker clients of the project: the server's backend (aiodocker, on the event
loop) writes these labels, and the CLI and the pytest plugin's reaper (docker-py, synchronous) select
by them. Every container a sandbox runs in carries `LABEL_INSTANCE` (a hash of its emulator's data
folder) and `LABEL_SANDBOX`; a test session's sandboxes also carry `LABEL_SESSION`. A snapshot image is
a `docker commit` of such a container and inherits the same labels. Selecting by exactly one
non-empty label is what keeps a sweep from touching anything the emulator did not make.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

LABEL_PREFIX = "dev.tensorlake-emulator"
LABEL_SANDBOX = f"{LABEL_PREFIX}.sandbox-id"
LABEL_INSTANCE = f"{LABEL_PREFIX}.instance"
LABEL_NAMESPACE = f"{LABEL_PREFIX}.namespace"
LABEL_SESSION = f"{LABEL_PREFIX}.session"
LABEL_SNAPSHOT = f"{LABEL_PREFIX}.snapshot-id"
LABEL_POOL = f"{LABEL_PREFIX}.pool-id"  # warm and claimed containers of a pool
LABEL_CANARY = f"{LABEL_PREFIX}.canary"
# On every layer an image build commits (a LABEL after each FROM), value the instance label; see
# emulator.manager.images. The engine's own `labels` build option adds LABEL_INSTANCE as separate steps,
# so a running build's intermediate layers are untagged AND carry LABEL_INSTANCE: the dangling-image
# prune must leave images with this label while a build runs (RuntimeBackend.prune_exempt).
LABEL_BUILD = f"{LABEL_PREFIX}.build-instance"
# The repository every filesystem snapshot is committed to (`tensorlake-emulator/snapshot:<tag>`).
SNAPSHOT_REPO = "tensorlake-emulator/snapshot"


def instance_label(data_dir: Path) -> str:
    """The value of LABEL_INSTANCE for the emulator whose data folder is data_dir (16 hex characters).

    Containers are labelled with their emulator's data folder, so two emulators never reap each other's.
    """
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]


def label_filter(key: str, value: str, **extra: list[str]) -> dict[str, list[str]]:
    """Engine API `filters` selecting by one label `key=value` (plus any other filter, e.g. status=[...]).

    Raises ValueError for an empty value: `key=` would match nothing useful, and a bare `key` would
    match every emulator's resources.
    """
    if not value:
        raise ValueError(f"refusing to select by an empty {key} label")
    return {"label": [f"{key}={value}"], **extra}


def instance_filter(instance: str, **extra: list[str]) -> dict[str, list[str]]:
    """Filters for what the emulator with this instance label made."""
    return label_filter(LABEL_INSTANCE, instance, **extra)


def session_filter(session: str, **extra: list[str]) -> dict[str, list[str]]:
    """Filters for what one test session made, in whichever emulator."""
    return label_filter(LABEL_SESSION, session, **extra)

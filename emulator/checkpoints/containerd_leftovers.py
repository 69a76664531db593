"""containerd's copies of our checkpoints (docs/host.md, "Leftovers to know about").

Every `docker start --checkpoint` makes containerd unpack the checkpoint into a fresh
`$TMPDIR/ctrd-checkpoint<random>/` (containerd's TMPDIR: /tmp here) and nothing ever removes it:
one folder per restore, as large as the dump's non-page files (the pages themselves are links when
the runc mechanism made the dump, full copies with Docker's own). The emulator marks every dump it
hands to Docker with a unique `tle-restore-nonce` file, so the copy of one restore is found by its
nonce and removed right after, and copies of ours that an earlier crash left are swept at start-up.
Folders without our nonce file are never touched.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

NONCE_FILE = "tle-restore-nonce"
CONTAINERD_TMP = Path("/tmp")
PREFIX = "ctrd-checkpoint"
STALE_S = 600.0  # a copy this old is no restore in progress


def _copies(tmp: Path) -> list[Path]:
    try:
        return [p for p in tmp.iterdir() if p.name.startswith(PREFIX) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def remove_copy_of(nonce: str, tmp: Path = CONTAINERD_TMP) -> int:
    """Remove containerd's copy of the restore marked with `nonce`; the number removed (0 or 1)."""
    removed = 0
    for folder in _copies(tmp):
        try:
            if (folder / NONCE_FILE).read_text() == nonce:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed


def sweep_stale(tmp: Path = CONTAINERD_TMP, older_than_s: float = STALE_S) -> int:
    """Remove copies of our restores (they hold our nonce file) older than `older_than_s` seconds."""
    removed = 0
    now = time.time()
    for folder in _copies(tmp):
        try:
            if (folder / NONCE_FILE).is_file() and now - folder.stat().st_mtime > older_than_s:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed

"""Fixtures for the sdk_shim tests (helpers live in shimhelpers.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from shimhelpers import INNER_INI, Inner

from sdk_shim.launcher import EmulatorProcess


@pytest.fixture
def inner(tmp_path: Path) -> Iterator[Inner]:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "pytest.ini").write_text(INNER_INI)
    out = tmp_path / "out"
    out.mkdir()
    # A short temp folder: agent sockets live in the data folder, and a unix socket path is at most 107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="tle-s-", dir="/tmp"))
    yield Inner(root=root, out=out, sessions=tmp_path / "sessions", tmp=tmp, extra_env={})
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def own_emulator() -> Iterator[EmulatorProcess]:
    """An emulator for one test, stopped (and its sandboxes terminated) afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix="tle-e-", dir="/tmp"))
    proc = EmulatorProcess(data_dir=data_dir, extra_env={"TLE_WARM_RESERVE": "0"}).start()  # exact container counts
    yield proc
    proc.stop()
    shutil.rmtree(data_dir, ignore_errors=True)

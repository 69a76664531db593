"""Issue 16 kind 2: after a full cycle (create, suspend, resume, checkpoint, restore, copy, terminate,
restart) and the emulator's stop, nothing remains on the host that the emulator made and no longer
needs: no containerd checkpoint copies in /tmp, no containers, images, volumes or networks with its
label, no dumps, run folders or snapshot folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
from tensorlake.sandbox import Sandbox

from emulator.server import instance_label
from sdk_shim.launcher import EmulatorProcess

T = 60.0


def _ctrd_copies(data_dir: Path) -> set[str]:
    """containerd's copies of restores of dumps in `data_dir` (their page images link into it; other
    emulators running on this host at the same time have copies of their own)."""
    ours = set()
    for p in Path("/tmp").iterdir():
        if p.name.startswith("ctrd-checkpoint"):
            try:
                if any(f.is_symlink() and str(data_dir).lstrip("/") in os.readlink(f) for f in p.iterdir()):
                    ours.add(p.name)
            except OSError:
                continue
    return ours


def _docker(kind: str, label: str) -> list[str]:
    cmd = {"containers": ["docker", "ps", "-aq"], "images": ["docker", "images", "-aq"],
           "volumes": ["docker", "volume", "ls", "-q"], "networks": ["docker", "network", "ls", "-q"]}[kind]
    out = subprocess.run([*cmd, "--filter", f"label={label}"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_a_full_cycle_leaves_nothing_behind() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tle-leak-", dir="/tmp"))
    label = f"dev.tensorlake-emulator.instance={instance_label(data_dir)}"
    # Sandboxes outlive a stop (the default), so the restart adopts them.
    emu = EmulatorProcess(data_dir=data_dir, extra_env={"TLE_TERMINATE_ON_EXIT": "0"})
    emu.start()  # the start-up canary restores once too
    try:
        url = emu.api_url
        named = Sandbox.create(name=f"leak-{os.getpid()}", cpus=0.5, memory_mb=256, api_url=url,
                               request_timeout=T)
        named.write_file("/root/f", b"x")
        named.suspend()
        named.resume()
        snap = named.checkpoint()
        clone = Sandbox.create(snapshot_id=snap.snapshot_id, api_url=url, request_timeout=T)
        assert clone.read_file("/root/f").value == b"x"
        emu.stop()
        emu.proc = None
        emu.start()  # restart: the canary again, and the sandboxes adopted
        Sandbox.connect(clone.sandbox_id, api_url=url, request_timeout=T).terminate()
        named = Sandbox.connect(named.sandbox_id, api_url=url, request_timeout=T)
        named.suspend()
        named.terminate()
        assert httpx.delete(f"{url}/v1/namespaces/default/snapshots/{snap.snapshot_id}", timeout=T).is_success
    finally:
        emu.stop()
    try:
        assert _ctrd_copies(data_dir) == set(), "containerd's checkpoint copies left in /tmp"
        for kind in ("containers", "images", "volumes", "networks"):
            assert _docker(kind, label) == [], kind
        leftovers = {f for f in _files(data_dir)
                     if not f.startswith("state.sqlite3") and f not in ("emulator.log", "emulator.lock")
                     and f != "dumps/last-failed-dump.log"}
        assert leftovers == set(), leftovers
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

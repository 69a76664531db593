"""The per-sandbox host folders bind-mounted at /.tle/run (docs/security.md, "the agent channel").

The sandbox writes in its folder, so the host never follows or keeps what it finds there.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Container
from pathlib import Path

from emulator.agent_channel import AGENT_SOCKET_NAME, AgentEndpoint
from emulator.model.records import SandboxRecord


class RunDirs:
    """`<data>/run/<sandbox id>/`: made 0700 under a 0700 parent, removed whole when the sandbox ends."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "run"

    def path(self, sandbox_id: str) -> Path:
        return self.root / sandbox_id

    def endpoint(self, rec: SandboxRecord) -> AgentEndpoint:
        return AgentEndpoint(rec.id, self.path(rec.id), rec.container_id)

    def make(self, sandbox_id: str) -> Path:
        # 0700 on both levels: no other local user can reach an agent socket (root in the sandbox).
        # The sandbox can chmod its own folder, never the parent it cannot see.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        path = self.path(sandbox_id)
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def clear_socket(self, sandbox_id: str) -> None:
        """Remove a stale socket entry before the agent binds again (unlink never follows a link)."""
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            (self.path(sandbox_id) / AGENT_SOCKET_NAME).unlink()

    def remove(self, sandbox_id: str) -> None:
        # rmtree works on dir fds with O_NOFOLLOW here (shutil.rmtree.avoids_symlink_attacks), so links
        # the sandbox planted are removed, not followed; nothing it wrote outlives it on the host.
        shutil.rmtree(self.path(sandbox_id), ignore_errors=True)

    def sweep(self, live_ids: Container[str]) -> None:
        """Remove the folders of sandboxes that are no longer live (left by a crash)."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.name in live_ids:
                continue
            if entry.is_dir() and not entry.is_symlink():
                self.remove(entry.name)
            else:
                entry.unlink(missing_ok=True)

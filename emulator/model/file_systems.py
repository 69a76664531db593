"""File systems (docs/protocol.md §6.9): the registry record and the mount rules of the SDK's `FileSystemMount`.

A file system is durable storage the emulator owns: a folder under its data folder, named after the
file system. A mount puts it into a sandbox at `mount_path`, read-write or read-only. The checks here
are the ones the SDK makes locally (tensorlake/sandbox/models.py `FileSystemMount`), answered the same
way for clients that skip them, plus the path rules a container mount needs.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from pydantic import BaseModel, Field

from emulator.errors import BadRequest
from emulator.model.records import now_ms

# Artifact Storage repository names: what the cloud accepts is not documented; this is a safe folder
# and URL segment (the SDK only refuses the empty name).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Paths a mount may not cover: the agent's own folder and the kernel's file systems.
_RESERVED = ("/.tle", "/proc", "/sys", "/dev")


class FileSystemRecord(BaseModel):
    """A registered file system. `project` is the Artifact Storage project (the emulator has one);
    `session_label` the X-TLE-Session of the request that made it. Times in epoch ms."""

    name: str
    project: str
    status: str = "active"
    default_branch: str = "main"
    session_label: str | None = None
    created_at: int = Field(default_factory=now_ms)

    def repo(self) -> dict[str, Any]:
        """The Artifact Storage `Repo` / `RepoMetaInfo` shape (docs/protocol.md §6.9)."""
        return {"name": self.name, "full_name": f"{self.project}/{self.name}", "default_branch": self.default_branch,
                "status": self.status, "kind": "filesystem"}


def check_name(name: str) -> str:
    """A file system name usable as a folder. Raises BadRequest."""
    if not NAME_RE.match(name) or name in (".", ".."):
        raise BadRequest(f"invalid file system name {name!r}: 1-128 characters of letters, digits, '.', '_' "
                         "and '-', starting with a letter or digit")
    return name


def check_mount_path(path: str) -> str:
    """An absolute, normalised container path outside the reserved folders. Raises BadRequest."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise BadRequest(f"mount_path must be an absolute path; got {path!r}")
    norm = posixpath.normpath(path)
    if norm != path.rstrip("/") or "\x00" in path or len(path) > 4096:
        raise BadRequest(f"mount_path must be a normalised absolute path; got {path!r}")
    if norm == "/" or any(norm == r or norm.startswith(r + "/") for r in _RESERVED):
        raise BadRequest(f"mount_path {path!r} is reserved (/, /.tle, /proc, /sys and /dev cannot be mounted over)")
    return norm


def check_owner(owner: Any) -> None:
    """The SDK's owner rules (`_validate_mount_owners`): 1-256 printable non-blank ASCII bytes without
    quotes, NAME, UID, NAME:GROUP or UID:GID, numeric ids within 32 bits. Raises BadRequest."""
    if not isinstance(owner, str) or not owner or len(owner.encode()) > 256:
        raise BadRequest("owner must contain 1 to 256 bytes")
    if not all(33 <= ord(ch) <= 126 and ch not in "\"'" for ch in owner):
        raise BadRequest("owner must contain only non-whitespace printable ASCII characters")
    parts = owner.split(":")
    if len(parts) > 2 or any(not part for part in parts):
        raise BadRequest("owner must be NAME, UID, NAME:GROUP, or UID:GID")
    if any(part.isdigit() and int(part) > 0xFFFFFFFF for part in parts):
        raise BadRequest("a numeric owner id must fit a 32-bit uid/gid")


def normalise_mount(raw: dict[str, Any]) -> dict[str, Any]:
    """One FileSystemMount as the SDK sends it, checked the way the SDK checks it, in its wire shape
    (`read_only`/`prefetch` only when true, `snapshot_id`/`owner` only when set). Raises BadRequest."""
    fs_id = raw.get("file_system_id")
    if not isinstance(fs_id, str) or not fs_id:
        raise BadRequest("file_system_id must be a non-empty string")
    path = check_mount_path(raw.get("mount_path"))  # type: ignore[arg-type]
    read_only, prefetch = raw.get("read_only", False), raw.get("prefetch", False)
    if not isinstance(read_only, bool) or not isinstance(prefetch, bool):
        raise BadRequest("read_only and prefetch must be booleans")
    snapshot_id, owner = raw.get("snapshot_id"), raw.get("owner")
    if snapshot_id is not None and (not isinstance(snapshot_id, str) or not snapshot_id):
        raise BadRequest("snapshot_id must be a non-empty string")
    if snapshot_id is not None and not read_only:
        raise BadRequest("snapshot_id requires read_only=True")  # the SDK's own rule
    if snapshot_id is not None:
        raise BadRequest("file system snapshots are not kept by this emulator, so a mount cannot pin one")
    if owner is not None:
        check_owner(owner)
    out: dict[str, Any] = {"file_system_id": fs_id, "mount_path": path}
    if read_only:
        out["read_only"] = True
    if prefetch:
        out["prefetch"] = True
    if owner is not None:
        out["owner"] = owner
    return out


def normalise_mounts(raw: list[dict[str, Any]], existing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A list of mounts checked one by one and together: no mount path twice, also not one already in
    `existing` (an attach). Returns the normalised list. Raises BadRequest."""
    out = [normalise_mount(m) for m in raw]
    seen = {m["mount_path"] for m in existing}
    for m in out:
        if m["mount_path"] in seen:
            raise BadRequest(f"duplicate mount_path {m['mount_path']!r}")
        seen.add(m["mount_path"])
    return out

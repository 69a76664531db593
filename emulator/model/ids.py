"""Identifier and name rules (docs/protocol.md §1.3): ids are DNS labels that never look like names."""

from __future__ import annotations

import re
import uuid

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def new_sandbox_id() -> str:
    # 20 lowercase hex chars keep the agent's unix socket path well under the 108-byte limit.
    return uuid.uuid4().hex[:20]


def new_snapshot_id() -> str:
    return f"snap_{uuid.uuid4().hex[:16]}"


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))

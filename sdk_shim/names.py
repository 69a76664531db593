"""Sandbox names private to one test session on a shared (reused) emulator.

Names are unique per namespace in the emulator, as in the service. Two test sessions that reuse one
emulator and both create `Sandbox.create(name="db")` would collide (NAME_CONFLICT), so the session's
forwarder stores each name it sees created as `<name>__<tag>` (tag: 8 hex digits of the session's id;
names allow letters, digits, `-` and `_`, at most 63, so a name over 53 characters is left as it is) and
translates back: the code under test sees and uses the names it chose, `tensorlake-emulator list`
shows which session a sandbox belongs to, and sessions never collide. Only JSON bodies of the
lifecycle API are touched, and only the `name` fields and sandbox path segments that are this
session's names.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

MAX_NAME = 63  # the emulator's (and the service's) limit on a sandbox name
_IDENT = re.compile(r"^(?P<head>(?:/v1/namespaces/[^/]+)?/sandboxes/)(?P<ident>[^/?]+)(?P<tail>.*)$")


class SessionNames:
    """The translation table of one session's sandbox names (thread-safe: the forwarder is threaded)."""

    def __init__(self, tag: str) -> None:
        self.suffix = f"__{tag[:8]}"
        self._known: set[str] = set()
        self._mutex = threading.Lock()

    def stored(self, name: str) -> str:
        """The name as the emulator stores it (remembered, so paths and answers translate later)."""
        if name.endswith(self.suffix) or len(name) + len(self.suffix) > MAX_NAME:
            return name
        with self._mutex:
            self._known.add(name)
        return name + self.suffix

    def shown(self, name: str) -> str:
        return name[: -len(self.suffix)] if name.endswith(self.suffix) else name

    def request_body(self, method: str, body: bytes) -> bytes:
        """Create (POST /sandboxes) and update (PATCH) bodies: give their `name` the session's suffix."""
        if method not in ("POST", "PATCH") or not body:
            return body
        try:
            data = json.loads(body)
        except ValueError:
            return body
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
            return body
        data["name"] = self.stored(data["name"])
        return json.dumps(data).encode()

    def request_path(self, path: str) -> str:
        """A sandbox addressed by one of this session's names is addressed by its stored name."""
        m = _IDENT.match(path)
        if not m:
            return path
        with self._mutex:
            known = m.group("ident") in self._known
        return f"{m.group('head')}{m.group('ident')}{self.suffix}{m.group('tail')}" if known else path

    def response_body(self, data: bytes) -> bytes:
        """Answers show the names the session chose (one sandbox, or a list of them)."""
        try:
            parsed = json.loads(data)
        except ValueError:
            return data
        if not self._strip(parsed):
            return data
        return json.dumps(parsed).encode()

    def _strip(self, obj: Any) -> bool:
        changed = False
        if isinstance(obj, dict):
            name = obj.get("name")
            if isinstance(name, str) and name.endswith(self.suffix):
                obj["name"] = self.shown(name)
                changed = True
            for value in obj.values():
                if isinstance(value, list):
                    changed = any([self._strip(v) for v in value]) or changed
        return changed

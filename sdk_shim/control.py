"""Python helpers for the emulator's test controls (docs/controls.md): reset, faults, clock, request log,
metrics.

Standard library only, so a test can use them without anything beyond the SDK. Every function takes
`api_url`; without it the emulator is found through TLE_EMULATOR_URL, else TENSORLAKE_API_URL (what
the SDK uses). The key the SDK sends (TENSORLAKE_API_KEY, else TLE_API_KEY) goes along.

    from sdk_shim import control
    control.reset(namespace="default")         # {"sandboxes": [...], "snapshots": [...], ...}
    control.advance_clock(3600)                # timeout_secs deadlines within the hour fire now
    control.requests(sandbox=sb.sandbox_id, status="5xx")
    with control.EmulatorControl().fault("proxy_error", namespace="ns", status=503, count=2):
        ...                                    # the next two proxied requests in "ns" answer 503
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from emulator.config import client_auth_headers

DEFAULT_URL = "http://localhost:8900"


class ControlError(Exception):
    """The emulator refused a control request: `status` and `code` are its HTTP status and error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def default_url() -> str:
    return (os.environ.get("TLE_EMULATOR_URL") or os.environ.get("TENSORLAKE_API_URL") or DEFAULT_URL).rstrip("/")


class EmulatorControl:
    """The controls of one emulator (its lifecycle API URL); `session_label` scopes `reset_session()`."""

    def __init__(self, api_url: str | None = None, session_label: str | None = None, timeout: float = 60.0) -> None:
        self.api_url = (api_url or default_url()).rstrip("/")
        self.session_label = session_label
        self.timeout = timeout

    def _call(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
              raw: bool = False) -> Any:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        url = f"{self.api_url}{path}" + (f"?{urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json", **client_auth_headers()}
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            try:
                problem = json.loads(text)
                raise ControlError(err.code, problem.get("code", "?"), problem.get("error", text)) from None
            except ValueError:
                raise ControlError(err.code, "?", text[:500]) from None
        return payload.decode() if raw else json.loads(payload or b"null")

    def reset(self, namespace: str | None = None, session: str | None = None, everything: bool = False
              ) -> dict[str, Any]:
        """Terminate and delete the sandboxes and snapshots of a namespace and/or a session label
        (`everything=True`: of all). Returns the report: ids under sandboxes, terminated, snapshots."""
        if namespace is None and session is None and not everything:
            raise ValueError("say what to reset: namespace=, session=, or everything=True")
        return self._call("POST", "/emulator/reset", {"namespace": namespace, "session": session,
                                                      "all": "true" if everything else None})

    def reset_session(self) -> dict[str, Any]:
        """Reset what this control's session label made (the pytest plugin's session)."""
        if not self.session_label:
            raise ValueError("this EmulatorControl has no session_label")
        return self.reset(session=self.session_label)

    def clock(self) -> dict[str, Any]:
        """{"now_ms", "offset_secs", "wall_ms"}: the emulator's time and how far it was advanced."""
        return self._call("GET", "/emulator/clock")

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Move the emulator's clock forward; deadlines now passed act at once. Returns the clock and
        `fired`: [{"sandbox_id", "action": terminate|suspend|pending_timeout}]. A suspend finishes
        in the background (poll the sandbox's status)."""
        return self._call("POST", "/emulator/clock/advance", body={"seconds": seconds})

    def requests(self, sandbox: str | None = None, method: str | None = None, status: str | int | None = None,
                 since: int | None = None, after: int | None = None, port: str | None = None,
                 path: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Entries of the request log, oldest first (fields: seq, time_ms, port, method, path, query,
        sandbox, status, latency_ms). status: 404 or "4xx"; since: epoch ms on the emulator's clock."""
        query = {"sandbox": sandbox, "method": method, "status": status, "since": since, "after": after,
                 "port": port, "path": path, "limit": limit}
        return self._call("GET", "/emulator/requests", query)["requests"]

    def stream_requests(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """New request-log entries as they happen (the SSE stream), with the filters of `requests`.

        Blocks between entries; ends when the emulator stops. Close the generator to stop reading.
        """
        params = urlencode({k: v for k, v in filters.items() if v is not None})
        req = urllib.request.Request(f"{self.api_url}/emulator/requests/stream?{params}",
                                     headers=client_auth_headers())
        with urllib.request.urlopen(req, timeout=None) as resp:
            for line in resp:
                if line.startswith(b"data: "):
                    yield json.loads(line[6:])

    def metrics(self) -> str:
        """The Prometheus text of GET /metrics."""
        return self._call("GET", "/metrics", raw=True)

    # ---- faults (docs/controls.md "Faults") ----

    def inject_fault(self, kind: str, **params: Any) -> dict[str, Any]:
        """Put a fault in force: `kind` (create_pending, create_fail, no_capacity, suspend_fail,
        resume_fail, checkpoint_fail, suspend_slow, resume_slow, checkpoint_slow, proxy_error,
        proxy_cut, oom_kill), scope (namespace=, session=, sandbox= id or name, count=) and the
        kind's parameters. Returns the fault (its `id`); an oom_kill has acted already (`sandboxes`)."""
        return self._call("POST", "/emulator/faults", body={"kind": kind, **params})

    def faults(self) -> list[dict[str, Any]]:
        """The faults in force, with how often each fired (`fired`) and on which sandboxes."""
        return self._call("GET", "/emulator/faults")["faults"]

    def delete_fault(self, fault_id: str, missing_ok: bool = True) -> None:
        """Delete a fault (one whose count is used up is gone already: fine unless missing_ok=False)."""
        try:
            self._call("DELETE", f"/emulator/faults/{fault_id}")
        except ControlError as err:
            if err.status != 404 or not missing_ok:
                raise

    def clear_faults(self, namespace: str | None = None, session: str | None = None,
                     everything: bool = False) -> list[str]:
        """Delete the faults made for a namespace and/or session (everything=True: all); their ids."""
        if namespace is None and session is None and not everything:
            raise ValueError("say which faults to clear: namespace=, session=, or everything=True")
        return self._call("DELETE", "/emulator/faults", {"namespace": namespace, "session": session,
                                                         "all": "true" if everything else None})["deleted"]

    @contextlib.contextmanager
    def fault(self, kind: str, **params: Any) -> Iterator[dict[str, Any]]:
        """`inject_fault` for the length of a `with` block."""
        made = self.inject_fault(kind, **params)
        try:
            yield made
        finally:
            if kind != "oom_kill":
                self.delete_fault(made["id"])


class FaultInjector:
    """What the `tensorlake_faults` fixture gives: `inject(kind, **params)` scoped by default to the
    test session's label (so other sessions on a shared emulator are not hit), every fault made
    deleted by `clear()` (the fixture calls it after the test)."""

    def __init__(self, control: EmulatorControl) -> None:
        self.control = control
        self._made: list[str] = []

    def inject(self, kind: str, **params: Any) -> dict[str, Any]:
        if not ({"namespace", "session", "sandbox"} & params.keys()) and self.control.session_label:
            params["session"] = self.control.session_label
        made = self.control.inject_fault(kind, **params)
        if kind != "oom_kill":
            self._made.append(made["id"])
        return made

    def clear(self) -> None:
        for fault_id in self._made:
            self.control.delete_fault(fault_id)
        self._made.clear()


def reset(namespace: str | None = None, session: str | None = None, everything: bool = False,
          api_url: str | None = None) -> dict[str, Any]:
    """EmulatorControl(api_url).reset(...)."""
    return EmulatorControl(api_url).reset(namespace, session, everything)


def advance_clock(seconds: float, api_url: str | None = None) -> dict[str, Any]:
    """EmulatorControl(api_url).advance_clock(seconds)."""
    return EmulatorControl(api_url).advance_clock(seconds)


def inject_fault(kind: str, api_url: str | None = None, **params: Any) -> dict[str, Any]:
    """EmulatorControl(api_url).inject_fault(kind, **params)."""
    return EmulatorControl(api_url).inject_fault(kind, **params)


def requests(api_url: str | None = None, **filters: Any) -> list[dict[str, Any]]:
    """EmulatorControl(api_url).requests(**filters)."""
    return EmulatorControl(api_url).requests(**filters)

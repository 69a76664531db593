"""A tiny lifecycle-API forwarder on localhost, used when a test session reuses a running emulator.

The SDK cannot add headers, so a session that did not start its own emulator (and so could not set
TLE_SESSION_LABEL on it) labels its sandboxes through this forwarder instead: it adds
`X-TLE-Session: <label>` to every request, passes it on to the real emulator, and records the ids of
the sandboxes and snapshots it sees created, so the reaper can delete them through the API later even
when Docker is out of reach (a CI job talking to `http://emulator:8900`).

Only the lifecycle API goes through here; the data plane goes straight to the `sandbox_url` the
emulator advertises. Lifecycle answers are small JSON bodies, so each one is read whole.

Kept on the standard library (http.server, http.client) rather than an ASGI app plus httpx: it runs
in a thread of the test process, which may itself run an event loop, and must start in milliseconds.
Its one hand-written piece is the chunked request-body reader below (the SDK sends Content-Length).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from sdk_shim.names import SessionNames

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host",
        "content-length"}
_CREATE = re.compile(r"^(?:/v1/namespaces/(?P<ns>[^/]+))?/sandboxes/?(?:\?.*)?$")
_SNAPSHOT = re.compile(r"^(?:/v1/namespaces/(?P<ns>[^/]+))?/sandboxes/[^/]+/snapshot/?(?:\?.*)?$")

Recorder = Callable[[str, str, str], None]  # (kind "sandbox"|"snapshot", namespace, id)


class Forwarder:
    def __init__(self, target: str, label: str, port: int, record: Recorder | None = None,
                 names: SessionNames | None = None) -> None:
        parsed = urlparse(target)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"the emulator URL must be http://host:port, got {target!r}")
        self.target_host = parsed.hostname
        self.target_port = parsed.port or 80
        self.label = label
        self.record = record or (lambda *_: None)
        self.names = names
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="tle-forwarder", daemon=True)

    @property
    def url(self) -> str:
        return f"http://localhost:{self.server.server_address[1]}"

    def start(self) -> Forwarder:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        # Long only because it holds a class of small methods: http.server wants a handler class, and
        # the closure over `fwd` is how each instance reaches this forwarder.
        fwd = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("content-length") or 0)
                return self.rfile.read(length) if length else b""

            def _forward(self) -> None:
                body = self._body()
                path = self.path
                # Sandbox names only: an image build's `name` is the image's (usable in create(image=...)).
                if fwd.names is not None and not path.startswith(("/images/", "/platform/")):
                    body = fwd.names.request_body(self.command, body)
                    path = fwd.names.request_path(path)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                headers["X-TLE-Session"] = fwd.label
                if body or self.command in ("POST", "PUT", "PATCH"):
                    headers["Content-Length"] = str(len(body))
                try:
                    budget = float(self.headers.get("x-tensorlake-request-timeout-ms", "300000")) / 1000
                except ValueError:
                    budget = 300.0
                conn = http.client.HTTPConnection(fwd.target_host, fwd.target_port, timeout=budget + 30)
                try:
                    conn.request(self.command, path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except OSError as exc:
                    msg = f'{{"error":"emulator at {fwd.target_host}:{fwd.target_port} unreachable: {exc}"}}'
                    self._reply(502, [("Content-Type", "application/json")], msg.encode())
                    return
                finally:
                    conn.close()
                if self.command == "POST" and 200 <= resp.status < 300:
                    self._note(data)
                if fwd.names is not None and "json" in (resp.getheader("content-type") or ""):
                    data = fwd.names.response_body(data)
                self._reply(resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP], data)

            def _note(self, data: bytes) -> None:
                path = self.path
                for kind, pattern, key in (("sandbox", _CREATE, "sandbox_id"), ("snapshot", _SNAPSHOT, "snapshot_id")):
                    m = pattern.match(path)
                    if not m:
                        continue
                    try:
                        ident = json.loads(data).get(key)
                    except (ValueError, AttributeError):
                        return
                    if ident:
                        fwd.record(kind, m.group("ns") or "default", ident)
                    return

            def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        return Handler

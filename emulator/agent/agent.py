#!/usr/bin/env python3
"""In-sandbox agent of the Tensorlake emulator.

This program runs as PID 1 inside every sandbox container. It serves the sandbox data-plane HTTP API
(``/api/v1/...``, PROTOCOL.md sections 5, 7 and 8) over HTTP/1.1 on a unix socket. The emulator's proxy on
the host forwards the SDK's requests verbatim to this socket and streams the answers back verbatim, so every
response here is exactly what the SDK expects on the wire.

It is a single stdlib-only file (python3 >= 3.9) so it can be bind-mounted into any image that has a python3.

Invocation
----------
``python3 agent.py --socket /.tle/run/agent.sock``

Environment:

``TLE_AGENT_SOCKET``
    Socket path, used when ``--socket`` is not given (default ``/.tle/run/agent.sock``). A stale socket
    file is removed before binding; the socket is chmod 0666.
``TLE_ENTRYPOINT``
    JSON list of strings. When set, it is started at boot as an ordinary (unmanaged) process: it shows in
    ``GET /api/v1/processes`` and its output is captured. The agent keeps serving whether or not it runs.
``TLE_OUTPUT_LIMIT_BYTES``
    Per-process bound on buffered output, all streams together (default 16 MiB = 16777216). Each line costs
    its byte length plus one. Past the bound the OLDEST lines are dropped and counted. Nothing is dropped
    silently: every ``GET .../stdout|stderr|output`` answer and every follow replay then begins with one
    marker line::

        [tensorlake-emulator: 123 earlier lines dropped, output buffer limit 16777216 bytes]

    counting only the lines of the stream(s) that view shows (on the combined views, and on run streams,
    the marker event carries ``"stream": "stderr"``). A follow or run stream whose client reads more slowly
    than the process writes gets such a marker at the point where it missed lines. A single line longer
    than the bound is split at the bound.
``TLE_DEFAULT_USER``
    Optional user (same syntax as the request's ``user`` string: ``app``, ``1000``, ``1000:1000``,
    ``app:staff``) for processes whose request names no ``user``, i.e. the image's ``USER`` when the agent
    itself runs as root. Files and parent directories that ``PUT /api/v1/files`` creates are then owned by
    that user too. Unset: processes run as the agent's own user and new files belong to it.
``TLE_MAX_FINISHED_PROCESSES``
    How many finished processes (with their output) are kept for inspection (default 1000); the oldest
    finished ones are forgotten first. Running processes are never forgotten.

These variables are removed from the environment that child processes inherit.

Behaviour notes
---------------
* Processes run in their own session / process group. Signals and kills go to the whole group.
* Default working directory: the agent's own cwd (the image's WorkingDir).
* PID 1 duties: one SIGCHLD handler reaps every child with ``waitpid(-1, WNOHANG)``; statuses of unknown pids
  (orphans reparented to PID 1) are just discarded. asyncio child watchers are never used.
* A process counts as exited when it is reaped and its output pipes reached EOF. If a background grandchild
  keeps the pipes open, the process is declared finished 250 ms after it was reaped (whatever was already
  written is still captured; later output of the grandchild is still appended to the buffer).
* ``oom_killed``: a SIGKILL death that the agent did not cause while the memory cgroup's ``oom_kill``
  counter increased (cgroup v2 ``memory.events`` or v1 ``memory.oom_control``).
* Managed processes (``name``/``restart``/``health_check`` given): when ``restart`` is omitted the policy is
  ``never``. Output of all incarnations goes into one buffer; follow streams of a managed process end when the
  supervisor stops (killed, or no further restart). A stopped managed process's name can be reused.
  Backoff before restart n is ``initial_backoff_ms * 2**n`` capped at ``max_backoff_ms`` (n resets after a
  run of 10 s or more); ``restart_count`` counts automatic and manual restarts. A health check that fails
  ``failure_threshold`` times in a row marks the process ``unhealthy`` and, unless the policy is ``never``,
  stops it (SIGTERM, SIGKILL after 10 s) so that the restart policy brings it back.
* ``POST .../restart`` of an unmanaged process SIGKILLs its group and starts the same command again as a new
  table entry (new pid); the old entry stays listed as exited.
* ``POST .../signal`` to a process whose group no longer exists answers ``{"success": false}``.
* A ``run`` whose client disconnects keeps running (it stays in the process table).
* Spawn failures: ``run`` streams one stderr line and an exit event with exit code 127 (126 for permission
  problems); ``POST /api/v1/processes`` answers ``400 SPAWN_FAILED``.
* Files: paths must be absolute (``400 INVALID_PATH``); a ``..`` component is refused with
  ``403 PATH_TRAVERSAL`` (as the real daemon does). Uploads stream into a temp file next to the target and are
  renamed over it (atomic; mode and owner of a replaced file are kept; parents are created). ``DELETE`` of a
  directory answers ``400 IS_DIRECTORY``. Listings are sorted by name; directories have ``size: null``; names
  that are not valid UTF-8 are shown with U+FFFD.
* HTTP/1.1 with keep-alive; request bodies with ``Content-Length`` or ``Transfer-Encoding: chunked``;
  ``Expect: 100-continue`` is honoured. Errors are ``{"error": "...", "code": "..."}``.
* On SIGTERM/SIGINT the agent SIGTERMs every process group, waits up to 3 s, SIGKILLs the rest and exits 0.

PTY sessions and TCP tunnels
----------------------------
The SDK speaks WebSockets for these (PROTOCOL.md sections 9 and 10); the proxy turns each WebSocket into one
upgraded connection on this socket: the same ``GET`` path, query and headers plus ``Connection: Upgrade`` and
``Upgrade: tle-frames``. The agent validates, then answers ``101 Switching Protocols`` or an ordinary JSON
error (which the proxy turns into the WebSocket's rejection with that status). After the 101 both sides send
frames of 1 byte kind + 4 bytes big-endian length + payload: kind 0 = one binary WebSocket message, 1 = one
text message, 2 = close (u16 code + UTF-8 reason). Without the upgrade headers these routes answer
``426 UPGRADE_REQUIRED``.

* ``POST /api/v1/pty`` ``{"command", "args"?, "env"?, "working_dir"?, "rows"?, "cols"?}`` -> ``201
  {"session_id", "token"}``. The command runs on a new pseudo-terminal as a session leader with the terminal
  as its controlling tty (``TERM=xterm-256color`` unless ``env`` sets it), as ``TLE_DEFAULT_USER`` when set,
  as a child of the agent (reaped by the one SIGCHLD reaper; captured by a CRIU dump with everything else).
  Spawn failures answer ``400 SPAWN_FAILED``; more than 256 live sessions ``429 TOO_MANY_SESSIONS``.
* ``GET /api/v1/pty/{id}/ws`` (upgrade): the token must match in ``?token=`` or ``X-PTY-Token`` (else
  ``403 INVALID_TOKEN``; unknown session ``404``). Client messages: ``0x00`` + keystrokes, ``0x01`` + cols u16
  + rows u16 (TIOCSWINSZ, the kernel sends SIGWINCH), ``0x02`` READY; text messages are ignored. Output is
  held until READY (up to 1 MiB; past that the terminal is not read, so the program blocks as on a stopped
  terminal), then sent as ``0x00`` messages of at most 64 KiB. When the program has exited and its output is
  collected (EOF on the terminal, or 250 ms after the exit when a background job keeps it open): ``0x03`` +
  exit code i32 (128 + signal number for a signal death), then close 1000 ``exit:<code>``. One client at a
  time: a new attach closes the previous one (1008). A client that leaves does not end the session; a later
  attach (READY) gets what was held meanwhile, and the exit when it happened.
* ``DELETE /api/v1/pty/{id}`` -> 204: an attached client gets close 1001 ``session terminated``, the process
  group is SIGKILLed and the terminal hung up. Exited sessions stay listed (``GET /api/v1/pty``,
  ``GET /api/v1/pty/{id}``) until deleted; beyond 64 the oldest are forgotten.
  ``POST /api/v1/pty/{id}/resize`` ``{"rows", "cols"}`` also resizes.
* ``GET /api/v1/tunnels/tcp?port=N`` (upgrade): the agent connects to ``127.0.0.1:N`` (then ``::1``) from
  inside the sandbox, so tunnels work without any network; nothing listening -> ``502
  TUNNEL_CONNECT_FAILED``. Then bytes flow verbatim both ways as binary messages; when the in-sandbox peer
  closes, the client gets close 1000 (1011 if the connection was reset), and a client that leaves closes the
  in-sandbox connection.
* CRIU: a session survives suspend/resume and snapshots (the WebSocket is cut by the dump; attach again).
  Stock CRIU (4.3) refuses to dump while a program on one of these terminals holds ``/dev/tty`` open (dash,
  i.e. ``/bin/sh``, does; bash does not): "ctty inheritance detected", because the master side is held by
  the agent, another process.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import grp
import itertools
import json
import os
import pwd
import secrets
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import termios
import time
import traceback
from json.encoder import encode_basestring_ascii as _json_str
from urllib.parse import parse_qs, unquote

VERSION = "0.1.0-tle-emulator"
DEFAULT_SOCKET = "/.tle/run/agent.sock"
DEFAULT_OUTPUT_LIMIT = 16 * 1024 * 1024
DEFAULT_MAX_FINISHED = 1000

IO_CHUNK = 256 * 1024
PIPE_READ = 256 * 1024
MAX_HEAD = 64 * 1024
MAX_JSON_BODY = 16 * 1024 * 1024
DRAIN_LEFTOVER_MAX = 4 * 1024 * 1024
KEEPALIVE_SECS = 15.0
EXIT_DRAIN_GRACE = 0.25
MANAGED_STOP_GRACE = 10.0
SHUTDOWN_GRACE = 3.0
SSE_BATCH_LINES = 5000

STDOUT = 0
STDERR = 1
STREAM_NAMES = ("stdout", "stderr")
AGENT_ENV_VARS = (
    "TLE_AGENT_SOCKET",
    "TLE_ENTRYPOINT",
    "TLE_OUTPUT_LIMIT_BYTES",
    "TLE_MAX_FINISHED_PROCESSES",
    "TLE_DEFAULT_USER",
)

REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
}


def now_ms() -> int:
    return int(time.time() * 1000)


def log(msg: str) -> None:
    try:
        sys.stderr.write(f"tle-agent: {msg}\n")
        sys.stderr.flush()
    except Exception:
        pass


def _clean(text: str) -> str:
    """Make a str that may carry surrogate escapes (undecodable file names) safe for strict JSON parsers."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str):
        message = _clean(message)
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class SpawnError(Exception):
    def __init__(self, message: str, exit_code: int = 127):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def bad_request(msg: str) -> HttpError:
    return HttpError(400, "BAD_REQUEST", msg)


# ----------------------------------------------------------------------------------------------------
# HTTP plumbing
# ----------------------------------------------------------------------------------------------------


class Body:
    """Streaming request body: Content-Length or chunked."""

    def __init__(self, conn: Connection, length: int | None, chunked: bool, expect_continue: bool):
        self.conn = conn
        self.reader = conn.reader
        self.remaining = length or 0
        self.chunked = chunked
        self.chunk_left = 0
        self.done = not chunked and not length
        self.expect_continue = expect_continue
        self.received = 0

    async def _continue(self) -> None:
        if self.expect_continue:
            self.expect_continue = False
            if not self.conn.started:
                self.conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await self.conn.writer.drain()

    async def read_chunk(self, maxsize: int = IO_CHUNK) -> bytes:
        """Next piece of the body; b'' at the end. Raises ConnectionError if the client vanished."""
        if self.done:
            return b""
        await self._continue()
        if not self.chunked:
            data = await self.reader.read(min(self.remaining, maxsize))
            if not data:
                raise ConnectionResetError("client closed the connection in the middle of the request body")
            self.remaining -= len(data)
            self.received += len(data)
            if self.remaining <= 0:
                self.done = True
            return data
        while True:
            if self.chunk_left == 0:
                line = await self.reader.readuntil(b"\r\n")
                size_txt = line[:-2].split(b";", 1)[0].strip()
                try:
                    size = int(size_txt, 16)
                except ValueError:
                    size = -1
                if size < 0:
                    self.conn.close_after = True  # the framing is lost: this connection cannot be reused
                    raise bad_request("malformed chunked request body")
                if size == 0:
                    while True:  # trailers
                        tline = await self.reader.readuntil(b"\r\n")
                        if tline == b"\r\n":
                            break
                    self.done = True
                    return b""
                self.chunk_left = size
            data = await self.reader.read(min(self.chunk_left, maxsize))
            if not data:
                raise ConnectionResetError("client closed the connection in the middle of the request body")
            self.chunk_left -= len(data)
            self.received += len(data)
            if self.chunk_left == 0:
                crlf = await self.reader.readexactly(2)
                if crlf != b"\r\n":
                    self.conn.close_after = True
                    raise bad_request("malformed chunked request body")
            if data:
                return data

    async def read_all(self, limit: int = MAX_JSON_BODY) -> bytes:
        parts = []
        total = 0
        while True:
            data = await self.read_chunk()
            if not data:
                break
            total += len(data)
            if total > limit:
                raise HttpError(413, "PAYLOAD_TOO_LARGE", f"request body larger than {limit} bytes")
            parts.append(data)
        return b"".join(parts)

    async def discard(self, limit: int) -> bool:
        """Read and drop the rest of the body; False if more than `limit` bytes remained."""
        dropped = 0
        if self.expect_continue:
            return False  # the client waits for our go-ahead; it never sent the body
        while not self.done:
            data = await self.read_chunk()
            dropped += len(data)
            if dropped > limit:
                return False
        return True


class Request:
    def __init__(self, method: str, target: str, version: str, headers: dict):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        path, _, query = target.partition("?")
        self.raw_path = path
        self.query = parse_qs(query, keep_blank_values=True, errors="surrogateescape")
        self.body: Body | None = None

    def qparam(self, name: str) -> str | None:
        vals = self.query.get(name)
        return vals[0] if vals else None


class Connection:
    def __init__(self, agent: Agent, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.agent = agent
        self.reader = reader
        self.writer = writer
        self.started = False  # response head sent for the current request
        self.close_after = False
        self.streaming = False

    # -- response helpers --
    def _head(self, status: int, headers: list) -> bytes:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
        for k, v in headers:
            lines.append(f"{k}: {v}")
        if self.close_after:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(self, status: int, body: bytes = b"", content_type: str | None = None) -> None:
        headers = []
        if status != 204:
            if content_type:
                headers.append(("Content-Type", content_type))
            headers.append(("Content-Length", str(len(body))))
        else:
            body = b""
        self.started = True
        self.writer.write(self._head(status, headers) + body)
        await self.writer.drain()

    async def json(self, status: int, obj) -> None:
        await self.send(status, json.dumps(obj).encode("utf-8"), "application/json")

    async def error(self, status: int, code: str, message: str) -> None:
        await self.json(status, {"error": message, "code": code})

    async def start_fixed(self, status: int, content_type: str, length: int) -> None:
        self.started = True
        head = self._head(status, [("Content-Type", content_type), ("Content-Length", str(length))])
        self.writer.write(head)

    async def start_chunked(self, status: int, content_type: str, extra: list | None = None) -> None:
        self.started = True
        self.streaming = True
        headers = [("Content-Type", content_type), ("Transfer-Encoding", "chunked")]
        if extra:
            headers.extend(extra)
        self.writer.write(self._head(status, headers))
        await self.writer.drain()

    async def chunk(self, data: bytes) -> None:
        if data:
            self.writer.write(b"%x\r\n" % len(data) + data + b"\r\n")
            await self.writer.drain()

    async def end_chunked(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()
        self.streaming = False

    async def start_sse(self) -> None:
        await self.start_chunked(200, "text/event-stream", [("Cache-Control", "no-cache")])

    # -- request loop --
    async def serve(self) -> None:
        try:
            while True:
                try:
                    head = await self.reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    self.close_after = True
                    await self.error(431, "BAD_REQUEST", "request head too large")
                    return
                self.started = False
                self.streaming = False
                req = self._parse_head(head)
                if req is None:
                    self.close_after = True
                    await self.error(400, "BAD_REQUEST", "malformed HTTP request")
                    return
                await self._handle(req)
                if self.close_after:
                    return
                if req.body is not None and not req.body.done:
                    try:
                        ok = await asyncio.wait_for(req.body.discard(DRAIN_LEFTOVER_MAX), 30)
                    except Exception:
                        ok = False
                    if not ok:
                        return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception:
            log("connection error:\n" + traceback.format_exc())
        finally:
            try:
                self.writer.close()
            except Exception:
                pass

    def _parse_head(self, head: bytes) -> Request | None:
        try:
            text = head.decode("latin-1")
            lines = text.split("\r\n")
            while lines and lines[0] == "":  # tolerate stray CRLF before a request
                lines.pop(0)
            if not lines:
                return None
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                return None
            method, target, version = parts
            headers: dict = {}
            for line in lines[1:]:
                if not line:
                    continue
                name, sep, value = line.partition(":")
                if not sep:
                    return None
                name = name.strip().lower()
                value = value.strip()
                if name in headers:
                    headers[name] = headers[name] + ", " + value
                else:
                    headers[name] = value
        except Exception:
            return None
        req = Request(method.upper(), target, version, headers)
        conn_hdr = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            if "keep-alive" not in conn_hdr:
                self.close_after = True
        elif "close" in conn_hdr:
            self.close_after = True
        te = headers.get("transfer-encoding", "").lower()
        chunked = "chunked" in te
        length = None
        if not chunked and "content-length" in headers:
            try:
                length = int(headers["content-length"].split(",")[0].strip())
                if length < 0:
                    raise ValueError
            except ValueError:
                return None
        expect = "100-continue" in headers.get("expect", "").lower()
        req.body = Body(self, length, chunked, expect)
        return req

    async def _handle(self, req: Request) -> None:
        try:
            await self.agent.dispatch(self, req)
        except HttpError as e:
            if not self.started:
                await self.error(e.status, e.code, e.message)
            else:
                self.close_after = True
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close_after = True
        except asyncio.LimitOverrunError:
            self.close_after = True
            if not self.started:
                await self.error(400, "BAD_REQUEST", "malformed request body")
        except asyncio.CancelledError:
            self.close_after = True
            raise
        except Exception as e:
            log(f"unhandled error in {req.method} {req.target}:\n{traceback.format_exc()}")
            if not self.started:
                self.close_after = True
                await self.error(500, "INTERNAL", f"internal agent error: {type(e).__name__}: {e}")
            else:
                self.close_after = True
        if self.streaming:  # a stream was interrupted: the framing is broken, close
            self.close_after = True


# ----------------------------------------------------------------------------------------------------
# Output buffer
# ----------------------------------------------------------------------------------------------------


class OutputBuffer:
    """Bounded line buffer shared by GET, follow and run streams.

    Lines are (stream, text, timestamp_ms, cost). Sequence numbers grow forever; the oldest lines are dropped
    when the byte cost exceeds the limit, and counted per stream.
    """

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self._lines: list = []
        self._base = 0  # seq of self._lines[0]
        self._start = 0  # index of the first retained line in self._lines
        self.total_bytes = 0
        self.dropped = [0, 0]
        self.closed = False
        self._waiters: list = []

    @property
    def first_seq(self) -> int:
        return self._base + self._start

    @property
    def next_seq(self) -> int:
        return self._base + len(self._lines)

    def slice(self, start_seq: int, end_seq: int) -> list:
        return self._lines[start_seq - self._base : end_seq - self._base]

    def extend(self, items: list) -> None:
        if not items:
            return
        self._lines.extend(items)
        for it in items:
            self.total_bytes += it[3]
        if self.total_bytes > self.limit:
            self._trim()
        self._notify()

    def _trim(self) -> None:
        lines = self._lines
        end = len(lines) - 1  # always keep the newest line
        while self.total_bytes > self.limit and self._start < end:
            it = lines[self._start]
            lines[self._start] = None
            self._start += 1
            self.total_bytes -= it[3]
            self.dropped[it[0]] += 1
        if self._start > 1024 and self._start * 2 > len(lines):
            del lines[: self._start]
            self._base += self._start
            self._start = 0

    def close(self) -> None:
        self.closed = True
        self._notify()

    def reopen(self) -> None:
        self.closed = False

    def waiter(self) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return fut

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def marker(self, streams: tuple) -> str | None:
        n = sum(self.dropped[s] for s in streams)
        if n <= 0:
            return None
        return marker_text(n, self.limit)

    def snapshot(self, streams: tuple) -> list:
        out = []
        m = self.marker(streams)
        if m is not None:
            out.append(m)
        want_all = len(streams) == 2
        for i in range(self._start, len(self._lines)):
            it = self._lines[i]
            if want_all or it[0] in streams:
                out.append(it[1])
        return out


def marker_text(n: int, limit: int) -> str:
    return f"[tensorlake-emulator: {n} earlier lines dropped, output buffer limit {limit} bytes]"


# ----------------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------------


class Spec:
    """A validated run/start request (everything needed to spawn, and to respawn)."""

    def __init__(self):
        self.command = ""
        self.args: list = []
        self.env: dict = {}
        self.working_dir: str | None = None
        self.timeout: float | None = None
        self.user = None
        self.stdin_mode = "closed"
        self.stdout_mode = "capture"
        self.stderr_mode = "capture"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_spec(body: dict) -> Spec:
    spec = Spec()
    cmd = body.get("command")
    if not isinstance(cmd, str) or not cmd:
        raise bad_request("`command` is required and must be a non-empty string")
    if "\x00" in cmd:
        raise bad_request("`command` must not contain NUL bytes")
    spec.command = cmd
    args = body.get("args")
    if args is not None:
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise bad_request("`args` must be a list of strings")
        if any("\x00" in a for a in args):
            raise bad_request("`args` must not contain NUL bytes")
        spec.args = list(args)
    env = body.get("env")
    if env is not None:
        if not isinstance(env, dict):
            raise bad_request("`env` must be an object of string values")
        for k, v in env.items():
            if not k or "=" in k or "\x00" in k:
                raise bad_request(f"invalid environment variable name {k!r}")
            if v is not None and not isinstance(v, str):
                raise bad_request(f"`env` values must be strings (env[{k!r}] is {type(v).__name__})")
            if isinstance(v, str) and "\x00" in v:
                raise bad_request("`env` values must not contain NUL bytes")
        spec.env = dict(env)
    wd = body.get("working_dir")
    if wd is not None:
        if not isinstance(wd, str) or not wd or "\x00" in wd:
            raise bad_request("`working_dir` must be a non-empty string")
        spec.working_dir = wd
    timeout = body.get("timeout")
    if timeout is not None:
        if not _is_number(timeout) or timeout < 0:
            raise bad_request("`timeout` must be a non-negative number of seconds")
        spec.timeout = float(timeout) if timeout > 0 else None
    user = body.get("user")
    if user is not None:
        if isinstance(user, str):
            if not user:
                raise bad_request("`user` must not be empty")
        elif isinstance(user, dict):
            for k in ("uid", "gid"):
                if user.get(k) is not None and (not _is_int(user[k]) or user[k] < 0):
                    raise bad_request(f"`user.{k}` must be a non-negative integer")
            if user.get("name") is not None and not isinstance(user["name"], str):
                raise bad_request("`user.name` must be a string")
            if user.get("name") is None and user.get("uid") is None:
                raise bad_request("`user` object needs `name` or `uid`")
        else:
            raise bad_request("`user` must be a string or an object")
        spec.user = user
    for field, allowed in (
        ("stdin_mode", ("closed", "pipe")),
        ("stdout_mode", ("capture", "discard")),
        ("stderr_mode", ("capture", "discard")),
    ):
        v = body.get(field)
        if v is None:
            continue
        if v not in allowed:
            raise bad_request("`{}` must be one of {}".format(field, ", ".join(allowed)))
        setattr(spec, field, v)
    return spec


def resolve_user(user) -> tuple:
    """-> (uid, gid, extra_groups or None, pwd entry or None). Raises SpawnError."""
    name = None
    group = None
    uid = gid = None
    if isinstance(user, str):
        u, _, g = user.partition(":")
        group = g or None
        if u.isdigit():
            uid = int(u)
        else:
            name = u
    else:
        name = user.get("name")
        uid = user.get("uid")
        gid = user.get("gid")
    pw = None
    if name is not None:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise SpawnError(f"unable to find user {name}: no matching entries in passwd file", 126) from None
        uid = pw.pw_uid
    else:
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            pw = None
    if group is not None:
        if group.isdigit():
            gid = int(group)
        else:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise SpawnError(
                    f"unable to find group {group}: no matching entries in group file", 126
                ) from None
    if gid is None:
        gid = pw.pw_gid if pw is not None else 0
    extra = None
    if pw is not None:
        try:
            extra = os.getgrouplist(pw.pw_name, gid)
        except OSError:
            extra = [gid]
    else:
        extra = [gid]
    return uid, gid, extra, pw


def read_oom_kills() -> int | None:
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as f:
                for line in f:
                    k, _, v = line.strip().partition(" ")
                    if k == "oom_kill":
                        return int(v)
        except (OSError, ValueError):
            continue
    return None


class Child:
    """One OS process (one incarnation of a table entry)."""

    def __init__(self, agent: Agent, proc: Proc, popen, out_fds: dict, stdin_fd: int | None, timeout):
        self.agent = agent
        self.proc = proc
        self.loop = agent.loop
        self.popen = popen
        self.pid = popen.pid
        self.started_at = now_ms()
        self.start_mono = time.monotonic()
        self.ended_at: int | None = None
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.oom_killed = False
        self.timed_out = False
        self.kill_sent = False
        self.reaped = False
        self.finished = False
        self.done = self.loop.create_future()
        self.partial = {STDOUT: bytearray(), STDERR: bytearray()}
        self.open_fds: dict = {}
        self.grace_handle = None
        self.escalate_handle = None
        self.timeout_handle = None
        for fd, s in out_fds.items():
            os.set_blocking(fd, False)
            self.open_fds[fd] = s
            self.loop.add_reader(fd, self._on_readable, fd, s)
        self.stdin_fd = stdin_fd
        self.stdin_pipe = stdin_fd is not None
        self.stdin_wait: asyncio.Future | None = None
        self.stdin_lock = asyncio.Lock()
        if stdin_fd is not None:
            os.set_blocking(stdin_fd, False)
        if timeout:
            self.timeout_handle = self.loop.call_later(timeout, self._on_timeout)

    # -- state --
    @property
    def status(self) -> str:
        if not self.reaped:
            return "running"
        if self.oom_killed:
            return "oom_killed"
        if self.signal is not None:
            return "signaled"
        return "exited"

    @property
    def stdin_writable(self) -> bool:
        return self.stdin_fd is not None

    def exit_event(self) -> dict:
        if self.timed_out:
            reason = "timed_out"
        elif self.oom_killed:
            reason = "oom_killed"
        elif self.signal is not None:
            reason = "signaled"
        else:
            reason = "exited"
        return {
            "exit_code": self.exit_code,
            "signal": self.signal,
            "oom_killed": self.oom_killed,
            "reason": reason,
        }

    # -- output --
    def _on_readable(self, fd: int, s: int) -> None:
        try:
            data = os.read(fd, PIPE_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._feed(s, data)
        else:
            self._eof(fd, s)

    def _feed(self, s: int, data: bytes) -> None:
        partial = self.partial[s]
        limit = self.proc.buffer.limit
        if b"\n" not in data:
            partial += data
            if len(partial) >= limit:
                self._emit(s, [bytes(partial)])
                partial.clear()
            return
        if partial:
            data = bytes(partial) + data
            partial.clear()
        parts = data.split(b"\n")
        rest = parts.pop()
        if rest:
            partial += rest
        if len(partial) >= limit:
            parts.append(bytes(partial))
            partial.clear()
        self._emit(s, parts)

    def _emit(self, s: int, raw_lines: list) -> None:
        ts = now_ms()
        self.proc.buffer.extend([(s, b.decode("utf-8", "replace"), ts, len(b) + 1) for b in raw_lines])

    def _flush_partial(self, s: int) -> None:
        partial = self.partial[s]
        if partial:
            self._emit(s, [bytes(partial)])
            partial.clear()

    def _eof(self, fd: int, s: int) -> None:
        try:
            self.loop.remove_reader(fd)
        except Exception:
            pass
        try:
            os.close(fd)
        except OSError:
            pass
        self.open_fds.pop(fd, None)
        self._flush_partial(s)
        if self.reaped and not self.open_fds:
            self._finish()

    def _drain_now(self) -> None:
        """Synchronously read whatever the pipes hold (used once the process is gone)."""
        for fd, s in list(self.open_fds.items()):
            budget = 8 * 1024 * 1024
            while budget > 0 and fd in self.open_fds:
                try:
                    data = os.read(fd, PIPE_READ)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    data = b""
                if not data:
                    self._eof(fd, s)
                    break
                budget -= len(data)
                self._feed(s, data)
            if fd in self.open_fds:
                self._flush_partial(s)

    # -- lifecycle --
    def on_reaped(self, status: int) -> None:
        if self.reaped:
            return
        self.reaped = True
        self.ended_at = now_ms()
        if os.WIFSIGNALED(status):
            self.signal = os.WTERMSIG(status)
            self.exit_code = None
        elif os.WIFEXITED(status):
            self.exit_code = os.WEXITSTATUS(status)
        else:  # cannot happen without WUNTRACED
            self.exit_code = -1
        self.popen.returncode = self.exit_code if self.signal is None else -self.signal
        oom_now = read_oom_kills()
        if self.signal == signal.SIGKILL and not self.kill_sent and not self.timed_out:
            before = self.agent.oom_seen
            if oom_now is not None and before is not None and oom_now > before:
                self.oom_killed = True
        if oom_now is not None:
            self.agent.oom_seen = oom_now
        if self.timeout_handle is not None:
            self.timeout_handle.cancel()
            self.timeout_handle = None
        if self.escalate_handle is not None:
            self.escalate_handle.cancel()
            self.escalate_handle = None
        self.close_stdin()
        if not self.open_fds:
            self._finish()
        else:
            self.grace_handle = self.loop.call_later(EXIT_DRAIN_GRACE, self._grace_expired)

    def _grace_expired(self) -> None:
        self.grace_handle = None
        if self.finished:
            return
        self._drain_now()
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.grace_handle is not None:
            self.grace_handle.cancel()
            self.grace_handle = None
        if not self.done.done():
            self.done.set_result(None)
        try:
            self.proc.on_child_finished(self)
        except Exception:
            log(f"error finishing process {self.pid}:\n{traceback.format_exc()}")

    def _on_timeout(self) -> None:
        self.timeout_handle = None
        if not self.reaped:
            self.timed_out = True
            self.signal_group(signal.SIGKILL)

    def signal_group(self, sig: int) -> bool:
        if sig == signal.SIGKILL:
            self.kill_sent = True
        if self.reaped and self.pid in self.agent.children:
            return False  # pid reused by another of our children: do not touch its group
        try:
            os.killpg(self.pid, sig)
            return True
        except ProcessLookupError:
            pass
        except OSError:
            return False
        if not self.reaped:
            try:
                os.kill(self.pid, sig)
                return True
            except OSError:
                return False
        return False

    def terminate(self, grace: float) -> None:
        """SIGTERM the group, SIGKILL it after `grace` seconds if the process is still there."""
        if self.reaped:
            return
        self.signal_group(signal.SIGTERM)
        if self.escalate_handle is None:
            self.escalate_handle = self.loop.call_later(grace, self._escalate)

    def _escalate(self) -> None:
        self.escalate_handle = None
        if not self.reaped:
            self.signal_group(signal.SIGKILL)

    def close_stdin(self) -> None:
        fd = self.stdin_fd
        if fd is None:
            return
        self.stdin_fd = None
        if self.stdin_wait is not None:
            try:
                self.loop.remove_writer(fd)
            except Exception:
                pass
            if not self.stdin_wait.done():
                self.stdin_wait.set_exception(BrokenPipeError(errno.EPIPE, "stdin closed"))
            self.stdin_wait = None
        try:
            os.close(fd)
        except OSError:
            pass

    async def write_stdin(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            fd = self.stdin_fd
            if fd is None:
                raise BrokenPipeError(errno.EPIPE, "stdin closed")
            try:
                n = os.write(fd, view)
                view = view[n:]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            fut = self.loop.create_future()
            self.stdin_wait = fut

            def _ready(f=fut):
                if not f.done():
                    f.set_result(None)

            self.loop.add_writer(fd, _ready)
            try:
                await fut
            finally:
                if self.stdin_fd == fd:
                    try:
                        self.loop.remove_writer(fd)
                    except Exception:
                        pass
                if self.stdin_wait is fut:
                    self.stdin_wait = None


class Managed:
    """Supervisor state of a managed process."""

    def __init__(self, proc: Proc, cfg: dict):
        self.proc = proc
        self.agent = proc.agent
        self.name = cfg["name"]
        self.id = cfg["name"] if cfg["name"] is not None else "mp-" + secrets.token_hex(6)
        self.restart = cfg["restart"]
        self.health_check = cfg["health_check"]
        self.status = "starting"
        self.restart_count = 0
        self.auto_restarts = 0
        self.health_status = "disabled" if self.health_check is None else "starting"
        self.consecutive_health_failures = 0
        self.last_exit: dict | None = None
        self.last_error: str | None = None
        self.next_restart_at: int | None = None
        self.stopping = False
        self.restarting = False
        self.backoff_attempt = 0
        self.restart_handle = None
        self.health_task: asyncio.Task | None = None
        self.lock = asyncio.Lock()

    def info(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "restart_count": self.restart_count,
            "restart": dict(self.restart),
            "health_check": dict(self.health_check) if self.health_check is not None else None,
            "health_status": self.health_status,
            "consecutive_health_failures": self.consecutive_health_failures,
            "last_exit": self.last_exit,
            "last_error": self.last_error,
            "next_restart_at": self.next_restart_at,
        }

    @property
    def active(self) -> bool:
        return self.status != "stopped"

    def on_spawned(self, child: Child) -> None:
        self.next_restart_at = None
        self.consecutive_health_failures = 0
        if self.health_check is None:
            self.status = "running"
            self.health_status = "disabled"
        else:
            self.status = "starting"
            self.health_status = "starting"
            self.health_task = self.agent.loop.create_task(self._health_loop(child))

    def _cancel_health(self) -> None:
        if self.health_task is not None:
            self.health_task.cancel()
            self.health_task = None

    def on_child_finished(self, child: Child) -> None:
        self._cancel_health()
        self.last_exit = {
            "exit_code": child.exit_code,
            "signal": child.signal,
            "oom_killed": child.oom_killed,
            "ended_at": child.ended_at,
        }
        if self.restarting:
            return
        if self.stopping:
            self._stopped()
            return
        failed = child.exit_code != 0
        policy = self.restart["policy"]
        want = policy == "always" or (policy == "on_failure" and failed)
        if want and time.monotonic() - child.start_mono >= 10.0:
            self.backoff_attempt = 0
        self._schedule_restart(want)

    def _schedule_restart(self, want: bool) -> None:
        maxr = self.restart.get("max_restarts")
        if want and maxr is not None and self.auto_restarts >= maxr:
            want = False
        if not want:
            self._stopped()
            return
        initial = max(0, self.restart["initial_backoff_ms"])
        delay_ms = min(self.restart["max_backoff_ms"], initial * (2 ** min(self.backoff_attempt, 30)))
        delay_ms = max(0, delay_ms)
        self.backoff_attempt += 1
        self.status = "backing_off"
        self.next_restart_at = now_ms() + int(delay_ms)
        self.restart_handle = self.agent.loop.call_later(delay_ms / 1000.0, self._auto_restart)

    def _stopped(self) -> None:
        self.status = "stopped"
        self.next_restart_at = None
        if self.restart_handle is not None:
            self.restart_handle.cancel()
            self.restart_handle = None
        self.proc.buffer.close()
        self.agent.on_entry_finished()

    def _auto_restart(self) -> None:
        self.restart_handle = None
        if self.stopping or self.restarting:
            return
        self.restart_count += 1
        self.auto_restarts += 1
        try:
            self.agent.spawn(self.proc)
        except SpawnError as e:
            self.last_error = e.message
            self.proc.buffer.extend([(STDERR, e.message, now_ms(), len(e.message) + 1)])
            self._schedule_restart(True)

    async def restart_now(self) -> None:
        async with self.lock:
            if self.restart_handle is not None:
                self.restart_handle.cancel()
                self.restart_handle = None
            self.restarting = True
            try:
                old = self.proc.child
                if old is not None and not old.finished:
                    old.terminate(MANAGED_STOP_GRACE)
                    await asyncio.shield(old.done)
            finally:
                self.restarting = False
            self.stopping = False
            self.backoff_attempt = 0
            self.auto_restarts = 0  # a manual restart gives the restart policy a fresh budget
            self.proc.buffer.reopen()
            self.restart_count += 1
            try:
                self.agent.spawn(self.proc)
            except SpawnError as e:
                self.last_error = e.message
                self._stopped()
                raise HttpError(
                    400, "SPAWN_FAILED", f"failed to restart {self.proc.spec.command}: {e.message}"
                ) from None

    def stop(self) -> None:
        self.stopping = True
        if self.restart_handle is not None:
            self.restart_handle.cancel()
            self.restart_handle = None
        self._cancel_health()
        child = self.proc.child
        self.status = "stopped"
        self.next_restart_at = None
        if child is not None and not child.reaped:
            child.terminate(MANAGED_STOP_GRACE)
        elif child is None or child.finished:
            self._stopped()

    async def _health_loop(self, child: Child) -> None:
        hc = self.health_check
        try:
            await asyncio.sleep(max(0, hc["initial_delay_ms"]) / 1000.0)
            while not child.reaped and not self.stopping and self.proc.child is child:
                ok = await self._check_once(hc)
                if child.reaped or self.stopping or self.proc.child is not child:
                    return
                if ok:
                    self.consecutive_health_failures = 0
                    self.health_status = "healthy"
                    self.status = "running"
                else:
                    self.consecutive_health_failures += 1
                    if self.consecutive_health_failures >= max(1, hc["failure_threshold"]):
                        self.health_status = "unhealthy"
                        if self.restart["policy"] != "never":
                            self.last_error = (
                                f"health check failed {self.consecutive_health_failures} times in a row"
                            )
                            child.terminate(MANAGED_STOP_GRACE)
                            return
                await asyncio.sleep(max(10, hc["interval_ms"]) / 1000.0)
        except asyncio.CancelledError:
            pass
        except Exception:
            log("health check loop error:\n" + traceback.format_exc())

    async def _check_once(self, hc: dict) -> bool:
        timeout = max(10, hc["timeout_ms"]) / 1000.0
        writer = None
        try:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", hc["port"]), timeout
                )
            except ConnectionRefusedError:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("::1", hc["port"]), timeout)
            if hc["type"] == "tcp":
                return True
            path = hc.get("path") or "/"
            if not path.startswith("/"):
                path = "/" + path
            writer.write((f"GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n").encode())
            line = await asyncio.wait_for(reader.readline(), timeout)
            parts = line.split()
            return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
        except (OSError, asyncio.TimeoutError, ValueError):
            return False
        finally:
            if writer is not None:
                try:
                    writer.close()
                except Exception:
                    pass


class Proc:
    """A process-table entry: the spec, the current Child, the output buffer, and the optional supervisor."""

    def __init__(self, agent: Agent, spec: Spec, managed_cfg: dict | None):
        self.agent = agent
        self.spec = spec
        self.serial = next(agent.serial)
        self.buffer = OutputBuffer(agent.output_limit)
        self.child: Child | None = None
        self.managed = Managed(self, managed_cfg) if managed_cfg is not None else None

    @property
    def pid(self) -> int:
        return self.child.pid if self.child is not None else 0

    @property
    def finished(self) -> bool:
        """No more output will come (follow streams end)."""
        return self.buffer.closed

    def info(self) -> dict:
        c = self.child
        d = {
            "pid": c.pid,
            "status": c.status,
            "exit_code": c.exit_code,
            "signal": c.signal,
            "stdin_writable": c.stdin_writable,
            "command": self.spec.command,
            "args": list(self.spec.args),
            "started_at": c.started_at,
            "ended_at": c.ended_at,
        }
        if self.managed is not None:
            d["managed"] = self.managed.info()
        return d

    def on_child_finished(self, child: Child) -> None:
        if child is not self.child:
            return
        if self.managed is None:
            self.buffer.close()
            self.agent.on_entry_finished()
        else:
            self.managed.on_child_finished(child)


# ----------------------------------------------------------------------------------------------------
# PTY sessions and TCP tunnels
# ----------------------------------------------------------------------------------------------------

# An upgraded connection ("Upgrade: tle-frames") carries frames of 1 byte kind + 4 bytes big-endian length +
# payload; the proxy maps each one to one WebSocket message or close, both ways.
FRAME_HEAD = struct.Struct(">BI")
FRAME_BINARY = 0  # one binary WebSocket message
FRAME_TEXT = 1  # one text WebSocket message (UTF-8)
FRAME_CLOSE = 2  # close: u16 big-endian code + UTF-8 reason
MAX_FRAME = 32 * 1024 * 1024
UPGRADE_PROTOCOL = "tle-frames"

PTY_OP_DATA = 0x00
PTY_OP_RESIZE = 0x01
PTY_OP_READY = 0x02
PTY_OP_EXIT = 0x03
PTY_MESSAGE_MAX = 64 * 1024  # terminal bytes per DATA message
PTY_BUFFER_LIMIT = 1024 * 1024  # output held while no client is READY; past it the terminal is not read
PTY_WRITE_HIGH = 256 * 1024  # unsent bytes towards the client past which the terminal is not read
PTY_FINAL_DRAIN = 256 * 1024  # at most this much is still read from the terminal once its program is gone
MAX_PTY_SESSIONS = 256  # live sessions
MAX_EXITED_PTY = 64  # exited sessions kept (for a late attach, GET, DELETE); the oldest are forgotten
TUNNEL_CONNECT_TIMEOUT = 5.0
TUNNEL_READ = 64 * 1024


def wants_frames(req: Request) -> bool:
    return (
        req.headers.get("upgrade", "").strip().lower() == UPGRADE_PROTOCOL
        and "upgrade" in req.headers.get("connection", "").lower()
    )


def require_frames(req: Request) -> None:
    if not wants_frames(req):
        raise HttpError(
            426, "UPGRADE_REQUIRED", "this endpoint is a WebSocket: connect to it through the sandbox proxy"
        )


class FrameStream:
    """The agent's end of an upgraded connection (see switch_to_frames)."""

    def __init__(self, conn: Connection):
        self.reader = conn.reader
        self.writer = conn.writer
        self.closed = False

    async def read(self) -> tuple | None:
        """(kind, payload) of the next frame; None once the proxy went away."""
        try:
            kind, n = FRAME_HEAD.unpack(await self.reader.readexactly(FRAME_HEAD.size))
            if n > MAX_FRAME:
                raise ConnectionResetError(f"frame of {n} bytes is too large")
            return kind, (await self.reader.readexactly(n) if n else b"")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed = True
            return None

    def write(self, kind: int, payload: bytes = b"") -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(FRAME_HEAD.pack(kind, len(payload)) + payload)

    def buffered(self) -> int:
        transport = self.writer.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame and end the connection (bytes already written are still delivered)."""
        if self.closed:
            return
        self.write(FRAME_CLOSE, struct.pack(">H", code) + reason.encode("utf-8")[:120])
        self.closed = True
        try:
            self.writer.close()
        except Exception:
            pass


async def switch_to_frames(conn: Connection) -> FrameStream:
    """Answer 101: from here on the connection carries frames, and it is closed when the handler returns."""
    conn.started = True
    conn.close_after = True
    head = f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE_PROTOCOL}\r\n\r\n"
    conn.writer.write(head.encode())
    await conn.writer.drain()
    return FrameStream(conn)


def _acquire_ctty() -> None:  # runs in the child between fork and exec
    try:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    except OSError:
        pass


def _winsize(rows: int, cols: int) -> bytes:
    return struct.pack("HHHH", rows, cols, 0, 0)


def _spawn_failure(e: Exception, command: str, cwd: str | None) -> SpawnError:
    """The SpawnError (shell-like message and exit code) for an exception of subprocess.Popen."""
    if isinstance(e, FileNotFoundError):
        if cwd is not None and e.filename == cwd:
            return SpawnError(f"sh: cd: {cwd}: No such file or directory", 127)
        if "/" in command:
            return SpawnError(f"sh: {command}: No such file or directory", 127)
        return SpawnError(f"sh: {command}: command not found", 127)
    if isinstance(e, PermissionError):
        return SpawnError("sh: {}: {}".format(command, e.strerror or "Permission denied"), 126)
    if isinstance(e, OSError):
        code = 126 if e.errno in (errno.ENOEXEC, errno.EACCES, errno.EPERM, errno.EISDIR) else 127
        return SpawnError(f"sh: {command}: {e.strerror or str(e)}", code)
    return SpawnError(f"sh: {command}: {e}", 127)


class PtySession:
    """A process on a pseudo-terminal, and the one client attached to it (a newer attach replaces an older).

    Registered in agent.children like a Child, so the agent's single reaper reports its exit (on_reaped).
    """

    def __init__(self, agent: Agent, spec: Spec, rows: int, cols: int):
        self.agent = agent
        self.loop = agent.loop
        self.id = secrets.token_hex(8)
        self.token = secrets.token_hex(16)
        self.spec = spec
        self.rows = rows
        self.cols = cols
        self.created_at = now_ms()
        self.master = -1
        self.popen = None
        self.pid = 0
        self.pending = bytearray()  # output no client has been sent yet
        self.client: FrameStream | None = None
        self.ready = False  # the attached client sent READY
        self.reading = False
        self.eof = False
        self.reaped = False
        self.finished = False  # exited and every byte of output collected
        self.deleted = False
        self.exit_code: int | None = None
        self.ended_at: int | None = None
        self.grace_handle = None
        self.drain_task: asyncio.Task | None = None
        self.input_wait: asyncio.Future | None = None
        self.input_lock = asyncio.Lock()

    # -- start --
    def start(self) -> None:
        agent, spec = self.agent, self.spec
        env = dict(agent.base_env)
        env["TERM"] = "xterm-256color"  # the client is a terminal emulator, whatever the image says
        uid = gid = extra = None
        user = spec.user if spec.user is not None else agent.default_user
        if user is not None:
            uid, gid, extra, pw = resolve_user(user)
            if pw is not None:
                env["HOME"] = pw.pw_dir
                env["USER"] = pw.pw_name
                env["LOGNAME"] = pw.pw_name
            if uid == os.geteuid() and gid == os.getegid():
                uid = gid = extra = None
        for k, v in spec.env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        cwd = spec.working_dir
        if cwd is not None and not os.path.isdir(cwd):
            why = "Not a directory" if os.path.exists(cwd) else "No such file or directory"
            raise SpawnError(f"sh: cd: {cwd}: {why}", 127)
        master, slave = os.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, _winsize(self.rows, self.cols))
            kwargs = {}
            if uid is not None:
                kwargs["user"] = uid
                kwargs["group"] = gid
                kwargs["extra_groups"] = extra or [gid]
                try:
                    os.fchown(slave, uid, -1)  # the terminal belongs to its user, as after a login
                except OSError:
                    pass
            try:
                popen = subprocess.Popen(
                    [spec.command] + spec.args,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,  # setsid(); then the terminal becomes its controlling tty
                    preexec_fn=_acquire_ctty,
                    close_fds=True,
                    restore_signals=True,
                    **kwargs,
                )
            except (OSError, ValueError, TypeError, subprocess.SubprocessError) as e:
                raise _spawn_failure(e, spec.command, cwd) from None
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        self.popen = popen
        self.pid = popen.pid
        agent.children[self.pid] = self
        self._flow()

    def info(self) -> dict:
        return {
            "session_id": self.id,
            "pid": self.pid,
            "command": self.spec.command,
            "args": list(self.spec.args),
            "rows": self.rows,
            "cols": self.cols,
            "status": "exited" if self.finished else "running",
            "exit_code": self.exit_code,
            "connected": self.client is not None,
            "created_at": self.created_at,
            "ended_at": self.ended_at,
        }

    # -- output --
    def _flow(self) -> None:
        """Read the terminal only while its output has somewhere to go."""
        if self.finished or self.master < 0 or self.eof:
            return
        client = self.client if self.ready else None
        if client is None:
            ok = len(self.pending) < PTY_BUFFER_LIMIT
        else:
            ok = client.buffered() <= PTY_WRITE_HIGH
            if not ok and self.drain_task is None:
                self.drain_task = self.loop.create_task(self._drained(client))
        if ok and not self.reading:
            self.loop.add_reader(self.master, self._on_readable)
            self.reading = True
        elif not ok:
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            try:
                self.loop.remove_reader(self.master)
            except Exception:
                pass

    async def _drained(self, client: FrameStream) -> None:
        try:
            await client.drain()
        except Exception:
            pass
        finally:
            self.drain_task = None
            self._flow()

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, PTY_MESSAGE_MAX)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: no process has the terminal open any more
            data = b""
        if not data:
            self._stop_reading()
            self.eof = True
            if self.reaped:
                self._finish()
            return
        self._deliver(data)
        self._flow()

    def _deliver(self, data: bytes) -> None:
        if self.client is not None and self.ready:
            self.client.write(FRAME_BINARY, bytes([PTY_OP_DATA]) + data)
        else:
            self.pending += data

    def _send_pending(self, client: FrameStream) -> None:
        data = bytes(self.pending)
        self.pending.clear()
        for i in range(0, len(data), PTY_MESSAGE_MAX):
            client.write(FRAME_BINARY, bytes([PTY_OP_DATA]) + data[i : i + PTY_MESSAGE_MAX])

    def _send_exit(self, client: FrameStream) -> None:
        code = self.exit_code if self.exit_code is not None else -1
        client.write(FRAME_BINARY, struct.pack(">Bi", PTY_OP_EXIT, code))
        client.close(1000, f"exit:{code}")
        if self.client is client:
            self.client = None
            self.ready = False

    # -- clients --
    def attach(self, client: FrameStream) -> None:
        old = self.client
        if old is not None:
            old.close(1008, "another client attached to this PTY session")
        self.client = client
        self.ready = False  # output is held until this client sends READY
        self._flow()

    def detach(self, client: FrameStream) -> None:
        if self.client is client:
            self.client = None
            self.ready = False
            self._flow()

    def on_ready(self, client: FrameStream) -> None:
        if self.client is not client or self.ready:
            return
        self.ready = True
        self._send_pending(client)
        if self.finished:
            self._send_exit(client)
        else:
            self._flow()

    async def write_input(self, data: bytes) -> None:
        """Keystrokes into the terminal; dropped once it is gone. Waits while the terminal does not take them."""
        async with self.input_lock:
            view = memoryview(data)
            while view:
                fd = self.master
                if fd < 0:
                    return
                try:
                    view = view[os.write(fd, view) :]
                    continue
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    return
                fut = self.loop.create_future()
                self.input_wait = fut

                def _writable(f=fut):
                    if not f.done():
                        f.set_result(None)

                self.loop.add_writer(fd, _writable)
                try:
                    await fut
                except OSError:
                    return
                finally:
                    if self.master == fd:
                        self.loop.remove_writer(fd)
                    if self.input_wait is fut:
                        self.input_wait = None

    def resize(self, cols: int, rows: int) -> None:
        if self.master < 0 or not (0 < cols <= 65535 and 0 < rows <= 65535):
            return
        self.rows, self.cols = rows, cols
        try:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, _winsize(rows, cols))  # the kernel sends SIGWINCH
        except OSError:
            pass

    # -- end --
    def on_reaped(self, status: int) -> None:
        if self.reaped:
            return
        self.reaped = True
        self.ended_at = now_ms()
        if os.WIFSIGNALED(status):
            self.exit_code = 128 + os.WTERMSIG(status)
        elif os.WIFEXITED(status):
            self.exit_code = os.WEXITSTATUS(status)
        else:
            self.exit_code = -1
        self.popen.returncode = self.exit_code  # so subprocess never waits for this pid itself
        if self.eof or self.deleted:
            self._finish()
        else:  # a background job may hold the terminal open: wait a moment for the last output, no longer
            self.grace_handle = self.loop.call_later(EXIT_DRAIN_GRACE, self._finish)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.grace_handle is not None:
            self.grace_handle.cancel()
            self.grace_handle = None
        self._stop_reading()
        budget = PTY_FINAL_DRAIN
        while not self.deleted and self.master >= 0 and budget > 0:
            try:
                data = os.read(self.master, PTY_MESSAGE_MAX)
            except OSError:
                break
            if not data:
                break
            budget -= len(data)
            self._deliver(data)
        self._close_master()
        if self.client is not None and self.ready:
            self._send_exit(self.client)
        self.agent.on_pty_finished()

    def _close_master(self) -> None:
        fd = self.master
        if fd < 0:
            return
        self._stop_reading()
        if self.input_wait is not None:
            try:
                self.loop.remove_writer(fd)
            except Exception:
                pass
            if not self.input_wait.done():
                self.input_wait.set_exception(BrokenPipeError(errno.EPIPE, "terminal closed"))
            self.input_wait = None
        self.master = -1
        try:
            os.close(fd)  # hangs up the terminal: what still runs on it gets SIGHUP
        except OSError:
            pass

    def signal_group(self, sig: int) -> bool:
        if self.reaped and self.pid in self.agent.children:
            return False  # pid reused by another of our children
        try:
            os.killpg(self.pid, sig)
            return True
        except OSError:
            pass
        if not self.reaped:
            try:
                os.kill(self.pid, sig)
                return True
            except OSError:
                return False
        return False

    def terminate(self) -> None:
        """DELETE: the attached client is told, the process group is killed, the terminal hung up."""
        self.deleted = True
        if self.client is not None:
            self.client.close(1001, "session terminated")
            self.client = None
            self.ready = False
        if not self.reaped:
            self.signal_group(signal.SIGKILL)
        self._close_master()
        self.pending.clear()
        if self.reaped:
            self._finish()


async def open_local_port(port: int) -> tuple:
    """A TCP connection to `port` inside the sandbox (IPv4 loopback, then IPv6). Raises OSError."""
    try:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TUNNEL_CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as first:
        try:
            return await asyncio.wait_for(asyncio.open_connection("::1", port), TUNNEL_CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            pass
        if isinstance(first, asyncio.TimeoutError):
            raise OSError(errno.ETIMEDOUT, "connection timed out") from None
        raise first


async def relay_tunnel(stream: FrameStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes both ways until either side closes; the client is told when the in-sandbox peer closed."""

    async def from_sandbox() -> None:
        while True:
            data = await reader.read(TUNNEL_READ)
            if not data:
                return
            stream.write(FRAME_BINARY, data)
            await stream.drain()

    async def to_sandbox() -> None:
        while True:
            frame = await stream.read()
            if frame is None or frame[0] == FRAME_CLOSE:
                return
            if frame[1]:
                writer.write(frame[1])
                await writer.drain()

    up = asyncio.ensure_future(from_sandbox())
    down = asyncio.ensure_future(to_sandbox())
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if up.done():
            failed = up.cancelled() or up.exception() is not None
            stream.close(1011 if failed else 1000, "connection reset in the sandbox" if failed else "")
    finally:
        for t in (up, down):
            t.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        try:
            writer.close()
        except Exception:
            pass
        stream.close(1000)


# ----------------------------------------------------------------------------------------------------
# The agent
# ----------------------------------------------------------------------------------------------------


def _parse_managed(body: dict) -> dict | None:
    name = body.get("name")
    restart = body.get("restart")
    hc = body.get("health_check")
    if name is None and restart is None and hc is None:
        return None
    if name is not None:
        if not isinstance(name, str) or not name:
            raise bad_request("`name` must be a non-empty string")
        if "/" in name or name.isdigit():
            raise bad_request("`name` must not contain '/' and must not be all digits")
    rcfg = {"policy": "never", "max_restarts": None, "initial_backoff_ms": 500, "max_backoff_ms": 30000}
    if restart is not None:
        if not isinstance(restart, dict):
            raise bad_request("`restart` must be an object")
        rcfg["policy"] = "on_failure"
        policy = restart.get("policy")
        if policy is not None:
            if policy not in ("never", "on_failure", "always"):
                raise bad_request("`restart.policy` must be one of never, on_failure, always")
            rcfg["policy"] = policy
        for k in ("max_restarts", "initial_backoff_ms", "max_backoff_ms"):
            v = restart.get(k)
            if v is None:
                continue
            if not _is_int(v) or v < 0:
                raise bad_request(f"`restart.{k}` must be a non-negative integer")
            rcfg[k] = v
    hcfg = None
    if hc is not None:
        if not isinstance(hc, dict):
            raise bad_request("`health_check` must be an object")
        if hc.get("type") not in ("http", "tcp"):
            raise bad_request("`health_check.type` must be http or tcp")
        port = hc.get("port")
        if not _is_int(port) or not 1 <= port <= 65535:
            raise bad_request("`health_check.port` must be an integer in 1..65535")
        path = hc.get("path")
        if path is not None and not isinstance(path, str):
            raise bad_request("`health_check.path` must be a string")
        hcfg = {
            "type": hc["type"],
            "port": port,
            "path": path,
            "initial_delay_ms": 5000,
            "interval_ms": 1000,
            "timeout_ms": 500,
            "failure_threshold": 3,
        }
        for k in ("initial_delay_ms", "interval_ms", "timeout_ms", "failure_threshold"):
            v = hc.get(k)
            if v is None:
                continue
            if not _is_int(v) or v < 0:
                raise bad_request(f"`health_check.{k}` must be a non-negative integer")
            hcfg[k] = v
    return {"name": name, "restart": rcfg, "health_check": hcfg}


def _validate_path(req: Request) -> str:
    path = req.qparam("path")
    if path is None or path == "":
        raise HttpError(400, "INVALID_PATH", "missing required query parameter `path`")
    if "\x00" in path:
        raise HttpError(400, "INVALID_PATH", "path must not contain NUL bytes")
    if not path.startswith("/"):
        raise HttpError(400, "INVALID_PATH", f"path must be absolute: {path}")
    if ".." in path.split("/"):
        raise HttpError(403, "PATH_TRAVERSAL", f"Path traversal detected: '..' is not allowed: {path}")
    return path


def _os_error(e: OSError, path: str) -> HttpError:
    if isinstance(e, FileNotFoundError):
        return HttpError(404, "NOT_FOUND", f"File not found: {path}")
    if isinstance(e, IsADirectoryError):
        return HttpError(400, "IS_DIRECTORY", f"Path is a directory, not a file: {path}")
    if isinstance(e, NotADirectoryError):
        return HttpError(
            400, "NOT_A_DIRECTORY", f"Not a directory (a component of the path is a file): {path}"
        )
    if isinstance(e, PermissionError):
        return HttpError(403, "PERMISSION_DENIED", f"Permission denied: {path}")
    if e.errno == errno.ENOSPC:
        return HttpError(500, "NO_SPACE", f"No space left on device: {path}")
    return HttpError(500, "IO_ERROR", f"{e.strerror or str(e)}: {path}")


class Agent:
    def __init__(self, socket_path: str, output_limit: int, max_finished: int):
        self.socket_path = socket_path
        self.output_limit = output_limit
        self.max_finished = max_finished
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.serial = itertools.count(1)
        self.entries: dict = {}  # serial -> Proc, in start order
        self.by_pid: dict = {}  # pid -> Proc (current pid of each entry)
        self.by_name: dict = {}  # managed name -> Proc
        self.children: dict = {}  # pid -> Child, live (unreaped) children only
        self.start_wall = time.time()
        self.oom_seen = read_oom_kills()
        self.server = None
        self.shutting_down = False
        self.stop_event: asyncio.Event | None = None
        self.connections: set = set()
        old_umask = os.umask(0)
        os.umask(old_umask)
        self.umask = old_umask
        self.base_env = {k: v for k, v in os.environ.items() if k not in AGENT_ENV_VARS}
        self.default_user = os.environ.get("TLE_DEFAULT_USER") or None
        self.dropped_finished = 0
        self.pty_sessions: dict = {}  # session id -> PtySession, in creation order

    # -- reaping --
    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                try:
                    child.on_reaped(status)
                except Exception:
                    log(f"error handling exit of {pid}:\n{traceback.format_exc()}")

    # -- spawning --
    def spawn(self, proc: Proc) -> Child:
        spec = proc.spec
        env = dict(self.base_env)
        uid = gid = None
        extra = None
        user = spec.user if spec.user is not None else self.default_user
        if user is not None:
            uid, gid, extra, pw = resolve_user(user)
            if pw is not None:
                env["HOME"] = pw.pw_dir
                env["USER"] = pw.pw_name
                env["LOGNAME"] = pw.pw_name
            if uid == os.geteuid() and gid == os.getegid():
                uid = gid = extra = None
        for k, v in spec.env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        cwd = spec.working_dir
        if cwd is not None:
            if not os.path.isdir(cwd):
                why = "Not a directory" if os.path.exists(cwd) else "No such file or directory"
                raise SpawnError(f"sh: cd: {cwd}: {why}", 127)
        pipes = []  # (parent_fd, child_fd)
        out_fds = {}
        stdin_parent = None
        try:
            if spec.stdin_mode == "pipe":
                r, w = os.pipe()
                pipes.append((w, r))
                stdin_parent, stdin_arg = w, r
            else:
                stdin_arg = subprocess.DEVNULL
            out_args = []
            for s, mode in ((STDOUT, spec.stdout_mode), (STDERR, spec.stderr_mode)):
                if mode == "capture":
                    r, w = os.pipe()
                    pipes.append((r, w))
                    out_fds[r] = s
                    out_args.append(w)
                else:
                    out_args.append(subprocess.DEVNULL)
            kwargs = {}
            if uid is not None:
                kwargs["user"] = uid
                kwargs["group"] = gid
                kwargs["extra_groups"] = extra or [gid]
            try:
                popen = subprocess.Popen(
                    [spec.command] + spec.args,
                    stdin=stdin_arg,
                    stdout=out_args[0],
                    stderr=out_args[1],
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                    restore_signals=True,
                    **kwargs,
                )
            except FileNotFoundError as e:
                if cwd is not None and e.filename == cwd:
                    raise SpawnError(f"sh: cd: {cwd}: No such file or directory", 127) from None
                if "/" in spec.command:
                    raise SpawnError(f"sh: {spec.command}: No such file or directory", 127) from None
                raise SpawnError(f"sh: {spec.command}: command not found", 127) from None
            except PermissionError as e:
                raise SpawnError(
                    "sh: {}: {}".format(spec.command, e.strerror or "Permission denied"), 126
                ) from None
            except OSError as e:
                code = 126 if e.errno in (errno.ENOEXEC, errno.EACCES, errno.EPERM, errno.EISDIR) else 127
                raise SpawnError(f"sh: {spec.command}: {e.strerror or str(e)}", code) from None
            except (ValueError, TypeError) as e:
                raise SpawnError(f"sh: {spec.command}: {e}", 127) from None
        except BaseException:
            for a, b in pipes:
                for fd in (a, b):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            raise
        for _parent, child_end in pipes:
            os.close(child_end)
        child = Child(self, proc, popen, out_fds, stdin_parent, spec.timeout)
        self.children[child.pid] = child
        old = proc.child
        if old is not None and self.by_pid.get(old.pid) is proc:
            del self.by_pid[old.pid]
        other = self.by_pid.get(child.pid)
        if other is not None and other is not proc:  # pid reuse: forget the stale entry
            self._forget(other)
        proc.child = child
        self.by_pid[child.pid] = proc
        if proc.managed is not None:
            proc.managed.on_spawned(child)
        return child

    def start_entry(self, spec: Spec, managed_cfg: dict | None = None) -> Proc:
        proc = Proc(self, spec, managed_cfg)
        self.spawn(proc)
        self.entries[proc.serial] = proc
        if proc.managed is not None and proc.managed.name is not None:
            self.by_name[proc.managed.name] = proc
        return proc

    def _forget(self, proc: Proc) -> None:
        self.entries.pop(proc.serial, None)
        if proc.child is not None and self.by_pid.get(proc.child.pid) is proc:
            del self.by_pid[proc.child.pid]
        if proc.managed is not None and proc.managed.name is not None:
            if self.by_name.get(proc.managed.name) is proc:
                del self.by_name[proc.managed.name]

    def on_entry_finished(self) -> None:
        finished = [p for p in self.entries.values() if p.finished and (p.child is None or p.child.reaped)]
        excess = len(finished) - self.max_finished
        for p in finished[: max(0, excess)]:
            self._forget(p)
            self.dropped_finished += 1

    def _default_owner(self) -> tuple | None:
        """(uid, gid) that new files should get, when TLE_DEFAULT_USER is set and the agent is root."""
        if self.default_user is None or os.geteuid() != 0:
            return None
        try:
            uid, gid, _extra, _pw = resolve_user(self.default_user)
        except SpawnError:
            return None
        if uid == 0 and gid == 0:
            return None
        return uid, gid

    def lookup(self, ref: str) -> Proc:
        proc = None
        if ref.isdigit():
            try:
                proc = self.by_pid.get(int(ref))
            except ValueError:
                proc = None
        else:
            proc = self.by_name.get(ref)
        if proc is None:
            raise HttpError(404, "NOT_FOUND", f"Process {ref} not found")
        return proc

    # -- routing --
    async def dispatch(self, conn: Connection, req: Request) -> None:
        path = req.raw_path
        if not path.startswith("/api/v1/") and "/api/v1/" in path:
            path = path[path.index("/api/v1/") :]
        segs = [unquote(s) for s in path.split("/")[1:]]
        while len(segs) > 1 and segs[-1] == "":
            segs.pop()
        if len(segs) < 3 or segs[0] != "api" or segs[1] != "v1":
            raise HttpError(404, "NOT_FOUND", f"No route for {req.method} {req.raw_path}")
        rest = segs[2:]
        m = req.method
        head = rest[0]
        n = len(rest)

        def allow(*methods):
            if m not in methods:
                raise HttpError(
                    405,
                    "METHOD_NOT_ALLOWED",
                    "Method {} not allowed on {} (allowed: {})".format(m, path, ", ".join(methods)),
                )

        if head == "health" and n == 1:
            allow("GET")
            return await conn.json(200, {"healthy": True})
        if head == "info" and n == 1:
            allow("GET")
            return await conn.json(200, self.daemon_info())
        if head == "processes":
            if n == 1:
                allow("GET", "POST")
                if m == "GET":
                    return await conn.json(200, {"processes": [p.info() for p in self.entries.values()]})
                return await self.h_start(conn, req)
            if n == 2 and rest[1] == "run" and m == "POST":
                return await self.h_run(conn, req)
            ref = rest[1]
            if n == 2:
                allow("GET", "DELETE")
                proc = self.lookup(ref)
                if m == "GET":
                    return await conn.json(200, proc.info())
                return await self.h_kill(conn, proc)
            op = rest[2]
            if n == 3 and op == "restart":
                allow("POST")
                return await self.h_restart(conn, self.lookup(ref))
            if n == 3 and op == "signal":
                allow("POST")
                return await self.h_signal(conn, req, self.lookup(ref))
            if n == 3 and op == "stdin":
                allow("POST")
                return await self.h_stdin(conn, req, self.lookup(ref))
            if n == 4 and op == "stdin" and rest[3] == "close":
                allow("POST")
                proc = self.lookup(ref)
                return await self.h_stdin_close(conn, proc)
            if op in ("stdout", "stderr", "output") and (n == 3 or (n == 4 and rest[3] == "follow")):
                allow("GET")
                proc = self.lookup(ref)
                streams = {"stdout": (STDOUT,), "stderr": (STDERR,), "output": (STDOUT, STDERR)}[op]
                if n == 3:
                    lines = proc.buffer.snapshot(streams)
                    return await conn.json(200, {"pid": proc.pid, "lines": lines, "line_count": len(lines)})
                return await self.h_follow(conn, proc, streams)
        if head == "files":
            if n == 1:
                allow("GET", "PUT", "DELETE")
                if m == "GET":
                    return await self.h_read_file(conn, req)
                if m == "PUT":
                    return await self.h_write_file(conn, req)
                return await self.h_delete_file(conn, req)
            if n == 2 and rest[1] == "list":
                allow("GET")
                return await self.h_list_dir(conn, req)
        if head == "pty":
            if n == 1:
                allow("GET", "POST")
                if m == "GET":
                    return await conn.json(200, {"sessions": [s.info() for s in self.pty_sessions.values()]})
                return await self.h_pty_create(conn, req)
            session = self.pty_session(rest[1])
            if n == 2:
                allow("GET", "DELETE")
                if m == "GET":
                    return await conn.json(200, session.info())
                return await self.h_pty_delete(conn, session)
            if n == 3 and rest[2] == "ws":
                allow("GET")
                return await self.h_pty_attach(conn, req, session)
            if n == 3 and rest[2] == "resize":
                allow("POST")
                return await self.h_pty_resize(conn, req, session)
        if head == "tunnels" and n == 2 and rest[1] == "tcp":
            allow("GET")
            return await self.h_tunnel(conn, req)
        raise HttpError(404, "NOT_FOUND", f"No route for {req.method} {req.raw_path}")

    def daemon_info(self) -> dict:
        running = sum(1 for p in self.entries.values() if p.child is not None and not p.child.reaped)
        return {
            "version": VERSION,
            # wall clock, not monotonic: after a CRIU restore on another boot the monotonic clock restarts
            "uptime_secs": max(0, int(time.time() - self.start_wall)),
            "running_processes": running,
            "total_processes": len(self.entries),
        }

    async def read_json(self, req: Request) -> dict:
        raw = await req.body.read_all(MAX_JSON_BODY)
        if not raw.strip():
            raise bad_request("request body must be a JSON object")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise bad_request(f"malformed JSON body: {e}") from None
        if not isinstance(body, dict):
            raise bad_request("request body must be a JSON object")
        return body

    # -- process handlers --
    async def h_start(self, conn: Connection, req: Request) -> None:
        body = await self.read_json(req)
        spec = parse_spec(body)
        mcfg = _parse_managed(body)
        if mcfg is not None and mcfg["name"] is not None:
            existing = self.by_name.get(mcfg["name"])
            if existing is not None:
                if existing.managed.active or not existing.child.finished:
                    raise HttpError(
                        409,
                        "NAME_CONFLICT",
                        "a managed process named {!r} already exists".format(mcfg["name"]),
                    )
                self._forget(existing)
        try:
            proc = self.start_entry(spec, mcfg)
        except SpawnError as e:
            raise HttpError(400, "SPAWN_FAILED", f"failed to start {spec.command}: {e.message}") from None
        await conn.json(201, proc.info())

    async def h_run(self, conn: Connection, req: Request) -> None:
        body = await self.read_json(req)
        spec = parse_spec(body)
        try:
            proc = self.start_entry(spec, None)
        except SpawnError as e:
            await conn.start_sse()
            out = sse_event("output", {"line": e.message, "timestamp": now_ms(), "stream": "stderr"})
            ex = sse_event(
                "exited", {"exit_code": e.exit_code, "signal": None, "oom_killed": False, "reason": "exited"}
            )
            await conn.chunk(out + ex)
            await conn.end_chunked()
            return
        child = proc.child
        await conn.start_sse()
        await conn.chunk(sse_event("started", {"pid": child.pid, "started_at": child.started_at}))
        await self.stream_lines(conn, proc, (STDOUT, STDERR))
        await conn.chunk(sse_event("exited", child.exit_event()))
        await conn.end_chunked()

    async def h_follow(self, conn: Connection, proc: Proc, streams: tuple) -> None:
        await conn.start_sse()
        await self.stream_lines(conn, proc, streams)
        await conn.chunk(b"event: eof\ndata: {}\n\n")
        await conn.end_chunked()

    async def stream_lines(self, conn: Connection, proc: Proc, streams: tuple) -> None:
        """Replay the buffer from the start, then follow it until the entry is finished."""
        buf = proc.buffer
        want_all = len(streams) == 2
        marker_stream = STREAM_NAMES[streams[0]] if len(streams) == 1 else "stderr"
        cursor = 0
        seen = [0, 0]  # per stream: how many of its lines lie before `cursor`
        eof_watch = asyncio.ensure_future(conn.reader.read(1))
        waiter = None
        try:
            while True:
                out = []
                if cursor < buf.first_seq:
                    # lines [cursor, first_seq) were dropped before this stream could send them
                    skipped = sum(buf.dropped[s] - seen[s] for s in streams)
                    seen = list(buf.dropped)
                    cursor = buf.first_seq
                    if skipped > 0:
                        out.append(output_event(marker_text(skipped, buf.limit), now_ms(), marker_stream))
                end = min(buf.next_seq, cursor + SSE_BATCH_LINES)
                if cursor < end:
                    items = buf.slice(cursor, end)
                    cursor = end
                    n_err = sum(map(_first, items))
                    seen[STDERR] += n_err
                    seen[STDOUT] += len(items) - n_err
                    if want_all:
                        out.append(output_events(items))
                    elif n_err == (len(items) if streams[0] == STDERR else 0):
                        out.append(output_events(items))
                    else:
                        only = streams[0]
                        out.append(output_events([it for it in items if it[0] == only]))
                if out:
                    await conn.chunk(b"".join(out))
                if cursor < buf.next_seq:
                    await asyncio.sleep(0)  # a long backlog: let other connections run between batches
                    continue
                if out:
                    continue
                if cursor >= buf.next_seq and buf.closed:
                    return
                if waiter is None or waiter.done():
                    waiter = buf.waiter()
                done, _ = await asyncio.wait(
                    {waiter, eof_watch}, timeout=KEEPALIVE_SECS, return_when=asyncio.FIRST_COMPLETED
                )
                if eof_watch in done:
                    if (
                        eof_watch.cancelled()
                        or eof_watch.exception() is not None
                        or eof_watch.result() == b""
                    ):
                        raise ConnectionResetError("client went away")
                    # the client sent more bytes (pipelining): close the connection after this response
                    conn.close_after = True
                    eof_watch = asyncio.get_running_loop().create_future()
                if not done:
                    await conn.chunk(b": keep-alive\n\n")
        finally:
            if waiter is not None and not waiter.done():
                waiter.cancel()
            if not eof_watch.done():
                eof_watch.cancel()
                try:
                    await eof_watch  # let the read really give up its place on the reader
                except BaseException:
                    pass

    async def h_kill(self, conn: Connection, proc: Proc) -> None:
        if proc.managed is not None:
            proc.managed.stop()
        else:
            # also reaches what is left of the group after the leader exited
            proc.child.signal_group(signal.SIGKILL)
        await conn.send(204)

    async def h_restart(self, conn: Connection, proc: Proc) -> None:
        if proc.managed is not None:
            await proc.managed.restart_now()
            return await conn.json(200, proc.info())
        old = proc.child
        if not old.reaped:
            old.signal_group(signal.SIGKILL)
        try:
            new = self.start_entry(proc.spec, None)
        except SpawnError as e:
            raise HttpError(
                400, "SPAWN_FAILED", f"failed to restart {proc.spec.command}: {e.message}"
            ) from None
        await conn.json(200, new.info())

    async def h_signal(self, conn: Connection, req: Request, proc: Proc) -> None:
        body = await self.read_json(req)
        sig = body.get("signal")
        if not _is_int(sig) or (sig != 0 and sig not in {int(x) for x in signal.valid_signals()}):
            raise bad_request("`signal` must be a valid signal number, e.g. 15")
        child = proc.child
        if sig == signal.SIGKILL:
            child.kill_sent = True
        ok = child.signal_group(sig)
        await conn.json(200, {"success": bool(ok)})

    async def h_stdin(self, conn: Connection, req: Request, proc: Proc) -> None:
        child = proc.child
        if child.stdin_fd is None:
            why = "was not started with stdin_mode=pipe" if not child.stdin_pipe else "has its stdin closed"
            raise HttpError(
                400, "STDIN_NOT_WRITABLE", f"stdin of process {child.pid} is not writable: it {why}"
            )
        async with child.stdin_lock:
            while True:
                data = await req.body.read_chunk()
                if not data:
                    break
                try:
                    await child.write_stdin(data)
                except OSError:
                    raise HttpError(
                        400,
                        "STDIN_NOT_WRITABLE",
                        f"stdin of process {child.pid} is not writable: the pipe is closed",
                    ) from None
        await conn.send(204)

    async def h_stdin_close(self, conn: Connection, proc: Proc) -> None:
        child = proc.child
        if not child.stdin_pipe:
            raise HttpError(
                400,
                "STDIN_NOT_WRITABLE",
                f"stdin of process {child.pid} was not started with stdin_mode=pipe",
            )
        child.close_stdin()
        await conn.send(204)

    # -- PTY and tunnel handlers --
    def pty_session(self, sid: str) -> PtySession:
        session = self.pty_sessions.get(sid)
        if session is None:
            raise HttpError(404, "NOT_FOUND", f"PTY session {sid} not found")
        return session

    def on_pty_finished(self) -> None:
        exited = [s for s in self.pty_sessions.values() if s.finished]
        for s in exited[: max(0, len(exited) - MAX_EXITED_PTY)]:
            del self.pty_sessions[s.id]

    async def h_pty_create(self, conn: Connection, req: Request) -> None:
        body = await self.read_json(req)
        spec = parse_spec(body)
        size = {}
        for k, default in (("rows", 24), ("cols", 80)):
            v = body.get(k)
            if v is None:
                v = default
            if not _is_int(v) or not 0 < v <= 65535:
                raise bad_request(f"`{k}` must be an integer in 1..65535")
            size[k] = v
        if sum(1 for s in self.pty_sessions.values() if not s.finished) >= MAX_PTY_SESSIONS:
            raise HttpError(429, "TOO_MANY_SESSIONS", f"at most {MAX_PTY_SESSIONS} PTY sessions may run at once")
        session = PtySession(self, spec, size["rows"], size["cols"])
        try:
            session.start()
        except SpawnError as e:
            raise HttpError(400, "SPAWN_FAILED", f"failed to start {spec.command}: {e.message}") from None
        self.pty_sessions[session.id] = session
        await conn.json(201, {"session_id": session.id, "token": session.token})

    async def h_pty_delete(self, conn: Connection, session: PtySession) -> None:
        self.pty_sessions.pop(session.id, None)
        session.terminate()
        await conn.send(204)

    async def h_pty_resize(self, conn: Connection, req: Request, session: PtySession) -> None:
        body = await self.read_json(req)
        rows, cols = body.get("rows"), body.get("cols")
        if not (_is_int(rows) and _is_int(cols) and 0 < rows <= 65535 and 0 < cols <= 65535):
            raise bad_request("`rows` and `cols` must be integers in 1..65535")
        session.resize(cols, rows)
        await conn.json(200, session.info())

    async def h_pty_attach(self, conn: Connection, req: Request, session: PtySession) -> None:
        offered = [t for t in (req.qparam("token"), req.headers.get("x-pty-token")) if t]
        good = session.token.encode()
        if not any(secrets.compare_digest(t.encode("utf-8", "surrogateescape"), good) for t in offered):
            raise HttpError(403, "INVALID_TOKEN", "Invalid token")
        require_frames(req)
        stream = await switch_to_frames(conn)
        session.attach(stream)
        try:
            while True:
                frame = await stream.read()
                if frame is None or frame[0] == FRAME_CLOSE:
                    break
                kind, msg = frame
                if kind != FRAME_BINARY or not msg:
                    continue  # text messages are ignored
                op = msg[0]
                if op == PTY_OP_DATA:
                    if len(msg) > 1:
                        await session.write_input(msg[1:])
                elif op == PTY_OP_RESIZE and len(msg) >= 5:
                    cols, rows = struct.unpack(">HH", msg[1:5])
                    session.resize(cols, rows)
                elif op == PTY_OP_READY:
                    session.on_ready(stream)
        finally:
            session.detach(stream)
            stream.closed = True

    async def h_tunnel(self, conn: Connection, req: Request) -> None:
        try:
            port = int(req.qparam("port") or "", 10)
        except ValueError:
            port = 0
        if not 0 < port <= 65535:
            raise bad_request("query parameter `port` must be an integer in 1..65535")
        require_frames(req)
        try:
            reader, writer = await open_local_port(port)
        except OSError as e:
            raise HttpError(
                502,
                "TUNNEL_CONNECT_FAILED",
                f"cannot connect to port {port} inside the sandbox: {e.strerror or e}",
            ) from None
        stream = await switch_to_frames(conn)
        await relay_tunnel(stream, reader, writer)

    # -- file handlers --
    async def h_read_file(self, conn: Connection, req: Request) -> None:
        path = _validate_path(req)
        loop = self.loop

        def _open():
            # O_NONBLOCK so that opening a FIFO cannot hang; regular files ignore it, and it is cleared below
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, "is a directory")
                if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                    raise HttpError(400, "NOT_A_FILE", f"Not a regular file (FIFO or socket): {path}")
                os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
            return fd, st

        try:
            fd, st = await loop.run_in_executor(None, _open)
        except OSError as e:
            raise _os_error(e, path) from None
        try:
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                size = st.st_size
                await conn.start_fixed(200, "application/octet-stream", size)
                sent = 0
                while sent < size:
                    data = await loop.run_in_executor(None, os.read, fd, min(IO_CHUNK, size - sent))
                    if not data:
                        conn.close_after = True  # file shrank; the promised length cannot be met
                        conn.streaming = True
                        return
                    sent += len(data)
                    conn.writer.write(data)
                    await conn.writer.drain()
            else:
                # /proc-style files (size 0) or special files: length unknown, stream chunked
                await conn.start_chunked(200, "application/octet-stream")
                while True:
                    data = await loop.run_in_executor(None, os.read, fd, IO_CHUNK)
                    if not data:
                        break
                    await conn.chunk(data)
                await conn.end_chunked()
        finally:
            os.close(fd)

    async def h_write_file(self, conn: Connection, req: Request) -> None:
        path = _validate_path(req)
        if path.endswith("/"):
            raise HttpError(400, "IS_DIRECTORY", f"Path is a directory, not a file: {path}")
        loop = self.loop
        umask = self.umask

        def _prepare():
            target = path
            if os.path.islink(target):
                target = os.path.realpath(target)
            if os.path.isdir(target):
                raise IsADirectoryError(errno.EISDIR, "is a directory")
            parent = os.path.dirname(target) or "/"
            default_owner = self._default_owner()
            missing = []
            d = parent
            while d not in ("/", "") and not os.path.lexists(d):
                missing.append(d)
                d = os.path.dirname(d)
            os.makedirs(parent, exist_ok=True)
            if default_owner is not None:
                for d in missing:
                    try:
                        os.chown(d, default_owner[0], default_owner[1])
                    except OSError:
                        pass
            try:
                st = os.stat(target)
                mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
            except FileNotFoundError:
                mode, owner = 0o666 & ~umask, default_owner
            base = os.path.basename(target)[:40]
            fd, tmp = tempfile.mkstemp(prefix=f".{base}.tle-upload-", dir=parent)
            return target, fd, tmp, mode, owner

        try:
            target, fd, tmp, mode, owner = await loop.run_in_executor(None, _prepare)
        except FileExistsError:
            raise HttpError(
                400, "NOT_A_DIRECTORY", f"Not a directory (a component of the path is a file): {path}"
            ) from None
        except OSError as e:
            raise _os_error(e, path) from None

        def _write_all(data: bytes) -> None:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]

        def _finish():
            os.fchmod(fd, mode)
            if owner is not None and os.geteuid() == 0:
                try:
                    os.fchown(fd, owner[0], owner[1])
                except OSError:
                    pass
            os.close(fd)
            os.replace(tmp, target)

        committed = False
        closed = False
        try:
            pending = bytearray()
            while True:
                data = await req.body.read_chunk()
                if data:
                    pending += data
                if pending and (len(pending) >= IO_CHUNK or not data):
                    chunk = bytes(pending)
                    pending.clear()
                    await loop.run_in_executor(None, _write_all, chunk)
                if not data:
                    break
            closed = True
            await loop.run_in_executor(None, _finish)
            committed = True
        except OSError as e:
            if isinstance(e, ConnectionError):
                raise
            raise _os_error(e, path) from None
        finally:
            if not committed:
                if not closed:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        await conn.send(204)

    async def h_delete_file(self, conn: Connection, req: Request) -> None:
        path = _validate_path(req)

        def _delete():
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory")
            os.unlink(path)

        try:
            await self.loop.run_in_executor(None, _delete)
        except OSError as e:
            raise _os_error(e, path) from None
        await conn.send(204)

    async def h_list_dir(self, conn: Connection, req: Request) -> None:
        path = _validate_path(req)

        def _list():
            st = os.stat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            entries = []
            with os.scandir(path) as it:
                for e in it:
                    try:
                        est = e.stat()
                    except OSError:
                        try:
                            est = e.stat(follow_symlinks=False)
                        except OSError:
                            continue
                    is_dir = stat.S_ISDIR(est.st_mode)
                    entries.append(
                        {
                            "name": _clean(e.name),
                            "is_dir": is_dir,
                            "size": None if is_dir else est.st_size,
                            "modified_at": est.st_mtime_ns // 1_000_000,
                        }
                    )
            entries.sort(key=lambda d: d["name"])
            return entries

        try:
            entries = await self.loop.run_in_executor(None, _list)
        except NotADirectoryError:
            raise HttpError(400, "NOT_A_DIRECTORY", f"Path is not a directory: {path}") from None
        except OSError as e:
            raise _os_error(e, path) from None
        await conn.json(200, {"path": _clean(path), "entries": entries})

    # -- server --
    async def _client(self, reader, writer) -> None:
        conn = Connection(self, reader, writer)
        task = asyncio.current_task()
        self.connections.add(task)
        try:
            await conn.serve()
        finally:
            self.connections.discard(task)

    def _start_entrypoint(self) -> None:
        raw = os.environ.get("TLE_ENTRYPOINT")
        if not raw:
            return
        try:
            argv = json.loads(raw)
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
                raise ValueError("must be a non-empty JSON list of strings")
        except ValueError as e:
            log(f"ignoring TLE_ENTRYPOINT {raw!r}: {e}")
            return
        spec = Spec()
        spec.command = argv[0]
        spec.args = argv[1:]
        try:
            proc = self.start_entry(spec, None)
            log(f"entrypoint started as pid {proc.pid}: {argv}")
        except SpawnError as e:
            log(f"entrypoint {argv} could not be started: {e.message}")

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(self._loop_exception)
        self.stop_event = asyncio.Event()
        self.loop.add_signal_handler(signal.SIGCHLD, self.reap)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop_event.set)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: None)
        self.reap()
        sock_dir = os.path.dirname(self.socket_path)
        if sock_dir:
            os.makedirs(sock_dir, exist_ok=True)
        try:
            st = os.lstat(self.socket_path)
            if stat.S_ISDIR(st.st_mode):
                raise SystemExit(f"tle-agent: socket path {self.socket_path} is a directory")
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        self.server = await asyncio.start_unix_server(
            self._client, path=self.socket_path, limit=MAX_HEAD, backlog=1024
        )
        os.chmod(self.socket_path, 0o666)
        log(f"listening on {self.socket_path} (pid {os.getpid()}, output limit {self.output_limit} bytes)")
        self._start_entrypoint()
        await self.stop_event.wait()
        await self.shutdown()

    def _loop_exception(self, loop, context) -> None:
        msg = context.get("message", "")
        exc = context.get("exception")
        if exc is not None:
            msg += ": " + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log(f"event loop error: {msg}")

    async def shutdown(self) -> None:
        self.shutting_down = True
        log("shutting down")
        if self.server is not None:
            self.server.close()
        for p in self.entries.values():
            if p.managed is not None:
                p.managed.stopping = True
                if p.managed.restart_handle is not None:
                    p.managed.restart_handle.cancel()
        for child in list(self.children.values()):
            child.signal_group(signal.SIGTERM)
        if os.getpid() == 1:
            try:
                os.kill(-1, signal.SIGTERM)
            except OSError:
                pass
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while self.children and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            self.reap()
        for child in list(self.children.values()):
            child.signal_group(signal.SIGKILL)
        if os.getpid() == 1:
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
        await asyncio.sleep(0.05)
        self.reap()
        for task in list(self.connections):
            task.cancel()
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass


def sse_event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _first(item) -> int:
    return item[0]


def output_events(items: list) -> bytes:
    """SSE output events for buffer items (stream, text, ts, cost), as sse_event() would write them."""
    names = STREAM_NAMES
    return "".join(
        [
            f'event: output\ndata: {{"line": {_json_str(t)}, "timestamp": {ts}, "stream": "{names[s]}"}}\n\n'
            for s, t, ts, _c in items
        ]
    ).encode()


def output_event(line: str, ts: int, stream: str) -> bytes:
    # same bytes as sse_event("output", {...}); built by hand because it runs once per output line
    return (
        'event: output\ndata: {"line": '
        + _json_str(line)
        + ', "timestamp": '
        + str(ts)
        + ', "stream": "'
        + stream
        + '"}\n\n'
    ).encode()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        v = int(raw)
        if v <= 0:
            raise ValueError
        return v
    except ValueError:
        log(f"ignoring invalid {name}={raw!r}")
        return default


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description="Tensorlake emulator in-sandbox agent")
    ap.add_argument("--socket", default=os.environ.get("TLE_AGENT_SOCKET") or DEFAULT_SOCKET)
    args = ap.parse_args(argv)
    agent = Agent(
        args.socket,
        _env_int("TLE_OUTPUT_LIMIT_BYTES", DEFAULT_OUTPUT_LIMIT),
        _env_int("TLE_MAX_FINISHED_PROCESSES", DEFAULT_MAX_FINISHED),
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(agent.run())
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:
            pass
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

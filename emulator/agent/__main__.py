#!/usr/bin/env python3
"""In-sandbox agent of the Tensorlake emulator.

This program runs as PID 1 inside every sandbox container. It serves the sandbox data-plane HTTP API
(``/api/v1/...``, docs/protocol.md sections 5, 7 and 8) over HTTP/1.1 on a unix socket. The emulator's proxy on
the host forwards the SDK's requests verbatim to this socket and streams the answers back verbatim, so every
response here is exactly what the SDK expects on the wire.

It is a small stdlib-only package (python3 >= 3.9, no third-party imports) so that its directory can be
bind-mounted read-only into any image that has a python3 and run as a directory: Python runs this
``__main__.py`` with the directory itself as ``sys.path[0]``, so the modules import each other as top-level
modules. Hence no module may be named like a stdlib module (``http``, ``pty``, ``signal``, ``select`` ...):
it would shadow it for the whole agent.

Invocation
----------
``python3 -B /.tle/agent --socket /.tle/run/agent.sock`` (``-B``: the mount is read-only, write no bytecode).

Environment:

``TLE_AGENT_SOCKET``
    Socket path, used when ``--socket`` is not given (default ``/.tle/run/agent.sock``). A stale socket
    file is removed before binding; the socket is chmod 0600 (only root reaches it).
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
* Processes run in their own session / process group. ``POST .../signal`` goes to the process group. Kill,
  a ``run`` timeout, a managed process's stop (and a restart's end of the previous incarnation) and a PTY's
  ``DELETE`` end the WHOLE process tree, however its members detached (setsid, double fork, new process group,
  nohup, daemons), also what is left of it after the process itself exited: see process_tree. Every started
  process gets ``TLE_PROCESS_TREE=<token>`` in its environment for that. A process started through the API
  is its own tree.
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
  ``403 PATH_TRAVERSAL`` (as the real daemon does). Uploads are written IN PLACE (inode, hard links, mode,
  owner and bind mounts such as ``/etc/hosts`` are kept; parents are created) and only once the body arrived
  whole: it is spooled into a nameless ``O_TMPFILE`` first, so a cut upload leaves the old file untouched and
  nothing behind (see file_write). ``DELETE`` of a directory answers ``400 IS_DIRECTORY``. Errors a user can
  cause are 4xx naming the path: ``IS_DIRECTORY``, ``NOT_A_DIRECTORY``, ``NAME_TOO_LONG``, ``SYMLINK_LOOP``,
  ``INVALID_ARGUMENT``, ``NOT_A_FILE``, ``NOT_SUPPORTED`` (400); ``PERMISSION_DENIED``,
  ``READ_ONLY_FILESYSTEM`` (403); ``NOT_FOUND`` (404); ``BUSY``, ``ALREADY_EXISTS`` (409); ``NO_SPACE``,
  ``FILE_TOO_LARGE`` (413). Only what a user cannot cause (EIO, ...) is ``500 IO_ERROR``. Listings are
  sorted by name; directories have ``size: null``; names that are not valid UTF-8 are shown with U+FFFD.
* HTTP/1.1 with keep-alive; request bodies with ``Content-Length`` or ``Transfer-Encoding: chunked``;
  ``Expect: 100-continue`` is honoured. Errors are ``{"error": "...", "code": "..."}``. ``HEAD`` is answered
  on every ``GET`` route (not the upgraded ones) with the head only; 204 has no body; see http_connection
  for the framing rules (tests/agent check every kind of answer with h11).
* On SIGTERM/SIGINT the agent SIGTERMs every process group, waits up to 3 s, SIGKILLs the rest and exits 0.

PTY sessions and TCP tunnels
----------------------------
The SDK speaks WebSockets for these (docs/protocol.md sections 9 and 10); the proxy turns each WebSocket into one
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

Modules
-------
``__main__``        this contract; command line and settings from the environment
``daemon``          the agent as a whole: socket, signals, entrypoint, shutdown
``routing``         which handler answers which method and path
``http_connection`` one HTTP/1.1 connection: keep-alive request loop, response helpers
``http_request``    a parsed request and its streaming body
``sse_output``      SSE encoding of output lines; the replay-then-follow stream
``output_buffer``   the bounded per-process line buffer
``process_api``     the ``/processes`` handlers
``process_spec``    validation of process start requests (Spec, managed settings)
``process_table``   the table of entries, spawning, the single SIGCHLD reaper, shutdown of all processes
``spawning``        user, environment, working directory and pipes of a new process
``child_process``   one OS process: output pipes, exit status, stdin, signals
``process_tree``    which tree every process belongs to; ending a tree
``supervision``     managed processes: restart policy, backoff, health checks
``file_api``        the ``/files`` handlers
``file_write``      uploads: spooled whole, then written in place
``pty_api``         the ``/pty`` handlers and the session registry
``pty_session``     a process on a pseudo-terminal and its attached client
``tcp_tunnel``      the ``/tunnels/tcp`` handler: relay to a port inside the sandbox
``frame_protocol``  upgraded connections: the frames the proxy maps to WebSocket messages (imported by it)
``frame_upgrade``   the 101 answer that switches a connection to frames
``errors``          HttpError, SpawnError and the shell-like spawn failure messages
``agent_log``       log lines on stderr, millisecond timestamps
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from agent_log import log
from daemon import Agent

DEFAULT_SOCKET = "/.tle/run/agent.sock"
DEFAULT_OUTPUT_LIMIT = 16 * 1024 * 1024
DEFAULT_MAX_FINISHED = 1000


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
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    agent = Agent(
        loop,
        args.socket,
        _env_int("TLE_OUTPUT_LIMIT_BYTES", DEFAULT_OUTPUT_LIMIT),
        _env_int("TLE_MAX_FINISHED_PROCESSES", DEFAULT_MAX_FINISHED),
    )
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

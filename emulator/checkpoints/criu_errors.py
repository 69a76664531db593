"""Why a CRIU dump failed, in words a sandbox user can act on, from CRIU's own dump log.

runc and Docker only say "criu failed: type NOTIFY" (or similar) plus the log file's path; the
cause is in the log's first error lines. Known causes get a sentence naming the state CRIU could
not take and why; any other failure quotes CRIU's first error lines.
"""

from __future__ import annotations

import re
from pathlib import Path

from emulator.errors import SnapshotFailed

# Lines CRIU logs as errors that do not fail a dump.
_BENIGN = ("RLIMIT_NOFILE", "overlay walk: readdir failed")
# (pattern in CRIU's error lines, the cause in words). The first that matches names the cause.
_KNOWN: list[tuple[str, str]] = [
    ("ctty inheritance detected",
     "a process of the sandbox has /dev/tty open on a terminal whose PTY master another process of "
     "the sandbox holds (an interactive shell in a PTY session opens /dev/tty); CRIU cannot dump a "
     "controlling terminal held that way (tty.c: ctty inheritance is not supported). End the PTY "
     "session, or run the program without a terminal, and try again"),
    ("consider using --tcp-established",
     "the sandbox holds an established TCP connection, and CRIU was not given tcp-established "
     "(see /etc/criu/runc.conf)"),
    ("file locks are hold",
     "the sandbox holds a file lock, and CRIU was not given file-locks (see /etc/criu/runc.conf)"),
    ("Can't dump half of stream unix connection",
     "a unix stream socket of the sandbox is connected to a peer outside it; CRIU can dump only both ends"),
    ("external unix",
     "a unix socket of the sandbox is connected to a peer outside it; CRIU can dump only both ends"),
    ("Can't dump ghost file",
     "the sandbox holds a deleted-but-open file larger than CRIU's ghost-limit (see /etc/criu/runc.conf)"),
    ("io_uring", "the sandbox holds an io_uring instance, which CRIU cannot dump"),
    ("Can't dump inotify",
     "the sandbox holds an inotify watch on a file CRIU could not find by path any more"),
]
_LOG_PATH = re.compile(r"(?:log file:|path=)\s*(\S+?\.log)")  # runc's wording; containerd's


def log_errors(path: Path, lines: int = 3) -> list[str]:
    """The first error lines of a CRIU log, without the timestamps and the benign ones."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    errs = [ln for ln in text if ("Error" in ln or "Timeout" in ln) and not any(b in ln for b in _BENIGN)]
    return [re.sub(r"^\(\d+\.\d+\)\s*", "", ln).strip() for ln in errs[:lines]]


def snapshot_failure(tool_output: str, dump_log: Path | None = None) -> SnapshotFailed:
    """The error of a failed dump: the known cause in words, CRIU's error lines, the tool's last line.

    `tool_output` is what runc (or Docker) answered; the dump log is `dump_log` or the file named
    in that answer ("log file: ...").
    """
    if dump_log is None:
        found = _LOG_PATH.search(tool_output.replace("\\n", "\n"))
        dump_log = Path(found.group(1)) if found else None
    errs = log_errors(dump_log) if dump_log is not None else []
    joined = " | ".join(errs)
    cause = next((words for pat, words in _KNOWN if pat in joined or pat in tool_output), None)
    last = (tool_output.strip().splitlines() or ["?"])[-1].strip()
    message = "snapshot of the process state failed"
    if cause:
        message += f": {cause}"
    # An outside unix peer is often the agent's last connection, gone a moment later: worth a retry.
    permanent = cause is not None and "unix" not in cause
    return SnapshotFailed(f"{message} (criu: {joined or last})", permanent=permanent)

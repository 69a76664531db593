"""The agent's two failures: HttpError (answered as ``{"error": ..., "code": ...}``) and SpawnError (a process
that could not be started, with the message and exit code a shell would give)."""

from __future__ import annotations

import errno


def clean_text(text: str) -> str:
    """Make a str that may carry surrogate escapes (undecodable file names) safe for strict JSON parsers."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str):
        message = clean_text(message)
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


def spawn_failure(e: Exception, command: str, cwd: str | None) -> SpawnError:
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

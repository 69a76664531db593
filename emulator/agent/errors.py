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


# errno -> (HTTP status, code) for file calls: every condition a user can cause is a 4xx naming the path and
# the reason (issue 11); only what the user cannot cause (EIO, ENOMEM, ...) stays 500 IO_ERROR.
_FILE_ERRNO = {
    errno.ENOENT: (404, "NOT_FOUND"),
    errno.EISDIR: (400, "IS_DIRECTORY"),
    errno.ENOTDIR: (400, "NOT_A_DIRECTORY"),
    errno.EACCES: (403, "PERMISSION_DENIED"),
    errno.EPERM: (403, "PERMISSION_DENIED"),
    errno.EROFS: (403, "READ_ONLY_FILESYSTEM"),
    errno.ENOSPC: (413, "NO_SPACE"),
    errno.EDQUOT: (413, "NO_SPACE"),
    errno.EFBIG: (413, "FILE_TOO_LARGE"),
    errno.EBUSY: (409, "BUSY"),
    errno.ETXTBSY: (409, "BUSY"),
    errno.EEXIST: (409, "ALREADY_EXISTS"),
    errno.ENOTEMPTY: (409, "NOT_EMPTY"),
    errno.EMLINK: (409, "TOO_MANY_LINKS"),
    errno.ENAMETOOLONG: (400, "NAME_TOO_LONG"),
    errno.ELOOP: (400, "SYMLINK_LOOP"),
    errno.EINVAL: (400, "INVALID_ARGUMENT"),
    errno.ENXIO: (400, "NOT_A_FILE"),
    errno.ENODEV: (400, "NOT_A_FILE"),
    errno.EOPNOTSUPP: (400, "NOT_SUPPORTED"),
    errno.EXDEV: (400, "CROSS_DEVICE"),
    errno.ESPIPE: (400, "NOT_SUPPORTED"),
}
_FILE_MESSAGES = {
    "NOT_FOUND": "File not found",
    "IS_DIRECTORY": "Path is a directory, not a file",
    "NOT_A_DIRECTORY": "Not a directory (a component of the path is a file)",
    "PERMISSION_DENIED": "Permission denied",
}


def file_error(e: OSError, path: str) -> HttpError:
    """The answer to an OSError of a file call on `path`: ``{"error": "<reason>: <path>", "code": ...}``."""
    status, code = _FILE_ERRNO.get(e.errno or 0, (500, "IO_ERROR"))
    reason = _FILE_MESSAGES.get(code) or e.strerror or str(e)
    return HttpError(status, code, f"{reason}: {path}")

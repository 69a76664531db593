"""``PUT /api/v1/files``: an upload written IN PLACE, and only once it arrived whole.

Two guarantees, both of the real daemon's behaviour and of issue 9/11:

* Identity. The target is opened and overwritten, never replaced by a rename: its inode, hard links, mode,
  owner, and any bind mount over it (``/etc/hosts``, ``/etc/resolv.conf`` in a container) stay as they were.
  A new file gets mode ``0666 & ~umask`` and the default owner (``TLE_DEFAULT_USER``), and so do the parent
  directories created for it.
* All or nothing. The body is first spooled into a NAMELESS file (``O_TMPFILE``: no directory entry, so no
  user ever sees it and nothing is left behind whatever happens, a crash of the agent included) on the target's
  file system. Only when the body ended at its announced end (the Content-Length reached, or the last chunk of
  a chunked body) is it copied into the target. A body cut anywhere (client, proxy, agent) leaves the old file
  untouched. Growing a file first reserves the new blocks (``posix_fallocate``), so a full disk answers
  ``413 NO_SPACE`` with the old content intact rather than a half-written file.

A program that is running from the target (``ETXTBSY``) cannot have its file written in place; such a file is
replaced atomically instead (mode and owner kept), which is what a package manager does.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

from errors import HttpError, file_error
from http_request import IO_CHUNK

if TYPE_CHECKING:
    from http_request import Request

COPY_CHUNK = 1024 * 1024
# One commit at a time per target (by real path): two uploads of one file never interleave their bytes.
_COMMIT_LOCKS: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # real path -> (lock, [users])
SPOOL_FALLBACK_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def _nearest_dir(path: str) -> str:
    d = os.path.dirname(path) or "/"
    while not os.path.isdir(d) and d not in ("/", ""):
        d = os.path.dirname(d)
    return d or "/"


def open_spool(target: str) -> int:
    """A nameless read-write file for the body, on the target's file system when it can be (same space
    accounting), else in a temporary directory. Closing it frees it; nothing is ever left on disk."""
    first = _nearest_dir(target)
    for d in (first, *SPOOL_FALLBACK_DIRS):
        try:
            return os.open(d, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError:
            pass
    for d in (*SPOOL_FALLBACK_DIRS, first):  # no O_TMPFILE there: a named file, unlinked at once
        try:
            fd, name = tempfile.mkstemp(prefix=".tle-upload-", dir=d)
        except OSError:
            continue
        os.unlink(name)
        return fd
    raise OSError(errno.ENOSPC, "no place to spool the upload")


def _copy(src: int, dst: int, size: int) -> None:
    """Copy `size` bytes of `src` over the start of `dst`: in the kernel (copy_file_range) where it can,
    else read and written sequentially from offset 0 (no pwrite, so /proc and /sys files can be written too)."""
    os.lseek(dst, 0, os.SEEK_SET)
    off = 0
    if size and hasattr(os, "copy_file_range"):
        try:
            while off < size:
                n = os.copy_file_range(src, dst, min(COPY_CHUNK * 64, size - off), off)
                if n <= 0:
                    break
                off += n
        except OSError as e:
            if off or e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                raise
    while off < size:
        data = os.pread(src, min(COPY_CHUNK, size - off), off)
        if not data:
            raise OSError(errno.EIO, "upload spool shrank")
        view = memoryview(data)
        while view:
            n = os.write(dst, view)
            view = view[n:]
            off += n


def _reserve(fd: int, old_size: int, new_size: int) -> None:
    """Reserve the blocks a grown file needs before writing any of them; a full disk then leaves the old
    content as it was. File systems without fallocate are written without the reservation."""
    if new_size <= old_size or old_size == 0:
        return  # an empty or /proc-style file has nothing to lose; fallocate there could even write zeros
    try:
        os.posix_fallocate(fd, old_size, new_size - old_size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            try:
                os.ftruncate(fd, old_size)
            except OSError:
                pass
            raise
        # EOPNOTSUPP, EINVAL (special files), ...: nothing reserved, write anyway


class Upload:
    """One PUT: the checks before the body, the spool, and the commit into the target."""

    def __init__(self, path: str, umask: int, default_owner: Callable[[], tuple | None]):
        self.path = path
        self.umask = umask
        self.default_owner = default_owner
        self.target_fd: int | None = None  # the existing target, opened for writing before the body is read
        self.spool: int | None = None
        self.size = 0
        self.busy_text = False  # the target is a running program's file: replace instead of writing

    def prepare(self) -> None:
        """Fail fast, before any body byte is read: a directory, a special file, a read-only or busy
        target. Raises OSError or HttpError."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise HttpError(400, "NOT_A_FILE", f"Not a regular file: {self.path}")
            try:
                self.target_fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
            except OSError as e:
                if e.errno != errno.ETXTBSY:
                    raise
                self.busy_text = True
        else:
            # (a component that is a file already failed in stat with ENOTDIR)
            parent = _nearest_dir(self.path)
            if not os.access(parent, os.W_OK | os.X_OK):
                if os.statvfs(parent).f_flag & os.ST_RDONLY:
                    raise OSError(errno.EROFS, "Read-only file system")
                raise PermissionError(errno.EACCES, "Permission denied")
        self.spool = open_spool(self.path)

    def _spool(self) -> int:
        if self.spool is None:
            raise RuntimeError("upload spool used before prepare()")
        return self.spool

    def write(self, data: bytes) -> None:
        fd = self._spool()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
            self.size += n

    def commit(self) -> None:
        """Copy the complete body into the target. Raises OSError."""
        spool = self._spool()
        if self.target_fd is not None:
            fd = self.target_fd
            old_size = os.fstat(fd).st_size
            _reserve(fd, old_size, self.size)
            _copy(spool, fd, self.size)
            if os.fstat(fd).st_size > self.size:
                os.ftruncate(fd, self.size)
        elif self.busy_text:
            self._replace()
        else:
            self._create()

    def _create(self) -> None:
        owner = self.default_owner()
        self._make_parents(owner)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOCTTY
        try:
            fd = os.open(self.path, flags, 0o666)
        except FileExistsError:
            # created meanwhile, or a dangling symlink: write through it in place
            self.target_fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY, 0o666)
            self.commit()
            return
        try:
            if owner is not None and os.geteuid() == 0:
                try:
                    os.fchown(fd, owner[0], owner[1])
                except OSError:
                    pass
            _copy(self._spool(), fd, self.size)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(self.path)
            except OSError:
                pass
            raise
        os.close(fd)

    def _make_parents(self, owner: tuple | None) -> None:
        parent = os.path.dirname(self.path) or "/"
        missing = []
        d = parent
        while d not in ("/", "") and not os.path.lexists(d):
            missing.append(d)
            d = os.path.dirname(d)
        try:
            os.makedirs(parent, exist_ok=True)
        except FileExistsError:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory") from None
        if owner is not None:
            for d in missing:
                try:
                    os.chown(d, owner[0], owner[1])
                except OSError:
                    pass

    def _replace(self) -> None:
        target = os.path.realpath(self.path)
        st = os.stat(target)
        fd, tmp = tempfile.mkstemp(prefix=".tle-upload-", dir=os.path.dirname(target))
        try:
            _copy(self._spool(), fd, self.size)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            if os.geteuid() == 0:
                os.fchown(fd, st.st_uid, st.st_gid)
            os.close(fd)
            fd = -1
            os.replace(tmp, target)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def close(self) -> None:
        for fd in (self.target_fd, self.spool):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.target_fd = self.spool = None


async def write_upload(req: Request, path: str, umask: int, default_owner: Callable[[], tuple | None]) -> None:
    """Receive the body of `req` and write it into `path` (see the module docstring). Raises HttpError for
    anything the user can cause, ConnectionError when the body was cut (nothing written then)."""
    loop = asyncio.get_running_loop()
    up = Upload(path, umask, default_owner)
    try:
        await loop.run_in_executor(None, up.prepare)
        pending = bytearray()
        while True:
            data = await req.body.read_chunk()  # raises when the body ends before its announced end
            if data:
                pending += data
            if pending and (len(pending) >= IO_CHUNK or not data):
                chunk = bytes(pending)
                pending.clear()
                await loop.run_in_executor(None, up.write, chunk)
            if not data:
                break
        key = await loop.run_in_executor(None, os.path.realpath, path)
        lock, users = _COMMIT_LOCKS.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                await loop.run_in_executor(None, up.commit)
        finally:
            users[0] -= 1
            if users[0] == 0:
                del _COMMIT_LOCKS[key]
    except OSError as e:
        if isinstance(e, ConnectionError):
            raise
        raise file_error(e, path) from None
    finally:
        up.close()

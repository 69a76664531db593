"""The ``/api/v1/files`` handlers: read, in-place write (file_write), delete and list, with the path rules
of the real daemon."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from errors import HttpError, clean_text, file_error
from file_write import write_upload
from http_request import IO_CHUNK

if TYPE_CHECKING:
    from http_connection import Connection
    from http_request import Request


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
    return file_error(e, path)


class FileApi:
    def __init__(self, default_owner: Callable[[], tuple | None]):
        self.default_owner = default_owner  # (uid, gid) for new files and directories, or None
        old_umask = os.umask(0)
        os.umask(old_umask)
        self.umask = old_umask

    async def h_read_file(self, conn: Connection, req: Request) -> None:
        path = _validate_path(req)
        loop = asyncio.get_running_loop()

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
                    await conn.write_body(data)
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
        """Write the body into the file in place, once the body is complete (see file_write)."""
        path = _validate_path(req)
        if path.endswith("/"):
            raise HttpError(400, "IS_DIRECTORY", f"Path is a directory, not a file: {path}")
        await write_upload(req, path, self.umask, self.default_owner)
        await conn.send(204)

    async def h_delete_file(self, conn: Connection, req: Request) -> None:
        path = _validate_path(req)

        def _delete():
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory")
            os.unlink(path)

        try:
            await asyncio.get_running_loop().run_in_executor(None, _delete)
        except OSError as e:
            raise _os_error(e, path) from None
        await conn.send(204)

    async def h_list_dir(self, conn: Connection, req: Request) -> None:
        path = _validate_path(req)

        def _list() -> list[dict]:
            st = os.stat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            entries: list[dict] = []
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
                            "name": clean_text(e.name),
                            "is_dir": is_dir,
                            "size": None if is_dir else est.st_size,
                            "modified_at": est.st_mtime_ns // 1_000_000,
                        }
                    )
            entries.sort(key=lambda d: d["name"])
            return entries

        try:
            entries = await asyncio.get_running_loop().run_in_executor(None, _list)
        except NotADirectoryError:
            raise HttpError(400, "NOT_A_DIRECTORY", f"Path is not a directory: {path}") from None
        except OSError as e:
            raise _os_error(e, path) from None
        await conn.json(200, {"path": clean_text(path), "entries": entries})

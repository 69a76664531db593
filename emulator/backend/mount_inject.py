"""Mount a host folder into a running container's mount namespace, or unmount one (issue 15).

A running container cannot get a new Docker bind mount, so the emulator uses the kernel's mount API:
`open_tree(OPEN_TREE_CLONE)` makes a detached copy of the folder's mount in the emulator's namespace,
`mount_setattr(MOUNT_ATTR_RDONLY)` makes it read-only when asked (writes inside then fail with
EROFS), and after `setns` into the container's mount namespace, `move_mount` attaches it at the
mount path. Nothing in the container's configuration changes, no helper binary is needed in the
image, and the sandbox itself (no CAP_SYS_ADMIN) can neither make nor undo such a mount.

`setns` needs a single-threaded process, so the work runs in a fresh `python3 -I` child running this
file as a script; it imports nothing of the emulator. Linux 5.12+ (mount_setattr); root.
Run as: `python3 -I mount_inject.py attach PID SRC TARGET RO OWNER` or `... detach PID TARGET`.
Exit 0 on success; otherwise the reason on stderr and exit 2 (a bad request: path in use, not a
folder, not mounted, unknown owner), 3 (the kernel or the emulator's privileges do not allow it) or 1
(anything else).
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442  # x86_64 and aarch64 share these
_AT_FDCWD, _AT_EMPTY_PATH, _AT_RECURSIVE = -100, 0x1000, 0x8000
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 1, 0o2000000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
_MNT_DETACH, _CLONE_NEWNS = 2, 0x00020000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Refused(Exception):
    """A request the caller got wrong (exit 2)."""


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _enter(pid: int) -> None:
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    _check(_libc.setns(fd, _CLONE_NEWNS), "setns")  # also moves root and cwd to the namespace's root
    os.close(fd)
    os.chdir("/")


def _resolve_owner(owner: str) -> tuple[int, int]:
    """NAME, UID, NAME:GROUP or UID:GID against the container's own /etc/passwd and /etc/group."""
    def table(path: str) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        try:
            with open(path) as f:
                for line in f:
                    parts = line.rstrip("\n").split(":")
                    if len(parts) >= 4 and parts[2].isdigit():
                        out[parts[0]] = (int(parts[2]), int(parts[3]) if parts[3].isdigit() else int(parts[2]))
        except OSError:
            pass
        return out
    user, _, group = owner.partition(":")
    if user.isdigit():
        uid, gid = int(user), int(user)
    elif user in (users := table("/etc/passwd")):
        uid, gid = users[user]
    else:
        raise Refused(f"owner user {user!r} does not exist in the sandbox image")
    if group:
        if group.isdigit():
            gid = int(group)
        elif group in (groups := table("/etc/group")):
            gid = groups[group][0]
        else:
            raise Refused(f"owner group {group!r} does not exist in the sandbox image")
    return uid, gid


def attach(pid: int, src: str, target: str, read_only: bool, owner: str) -> None:
    tree = _check(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, src.encode(),
                                _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE), "open_tree")
    attr = _MountAttr(attr_set=_MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV | (_MOUNT_ATTR_RDONLY if read_only else 0))
    _check(_libc.syscall(_SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH | _AT_RECURSIVE, ctypes.byref(attr),
                         ctypes.sizeof(attr)), "mount_setattr")
    uid_gid = None
    _enter(pid)
    if owner:
        uid_gid = _resolve_owner(owner)
    if os.path.lexists(target) and not os.path.isdir(target):
        raise Refused(f"mount_path {target} exists in the sandbox and is not a directory")
    os.makedirs(target, exist_ok=True)
    _check(_libc.syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, target.encode(), _MOVE_MOUNT_F_EMPTY_PATH),
           "move_mount")
    if uid_gid is not None:
        try:
            os.chown(target, *uid_gid)
        except OSError as exc:
            if exc.errno != errno.EROFS:  # a read-only mount keeps the owner it has
                raise


def detach(pid: int, target: str) -> None:
    _enter(pid)
    if _libc.umount2(target.encode(), _MNT_DETACH) < 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            raise Refused(f"nothing is mounted at {target}")
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def main(argv: list[str]) -> int:
    try:
        if argv[0] == "attach":
            attach(int(argv[1]), argv[2], argv[3], argv[4] == "1", argv[5])
        elif argv[0] == "detach":
            detach(int(argv[1]), argv[2])
        else:
            raise Refused(f"unknown operation {argv[0]!r}")
    except Refused as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(exc.strerror or str(exc), file=sys.stderr)
        return 3 if exc.errno in (errno.ENOSYS, errno.EPERM) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

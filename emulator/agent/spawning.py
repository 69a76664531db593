"""Starting a process for a Spec: who it runs as, its environment and working directory, and the pipes it
gets. PTY sessions share the first part (launch_settings)."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from typing import TYPE_CHECKING

from errors import SpawnError, spawn_failure
from output_buffer import STDERR, STDOUT

if TYPE_CHECKING:
    from process_spec import Spec


def resolve_user(user: str | dict) -> tuple[int, int, list[int], pwd.struct_passwd | None]:
    """-> (uid, gid, extra_groups, pwd entry or None). Raises SpawnError."""
    name: str | None = None
    group: str | None = None
    uid: int | None = None
    gid: int | None = None
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
        if uid is None:  # parse_spec lets no user object through without `name` or `uid`
            raise SpawnError("user without a name or a uid", 126)
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


def launch_settings(spec: Spec, base_env: dict, default_user, env_defaults: dict | None = None) -> tuple:
    """-> (env, cwd, Popen keyword arguments for the user). Raises SpawnError.

    The environment is `base_env`, then `env_defaults`, then the user's HOME/USER/LOGNAME, then the spec's
    own `env` (a None value removes a variable). The user is the spec's, else `default_user`.
    """
    env = dict(base_env)
    if env_defaults:
        env.update(env_defaults)
    uid = gid = None
    extra = None
    user = spec.user if spec.user is not None else default_user
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
    user_kwargs: dict = {}
    if uid is not None:
        user_kwargs["user"] = uid
        user_kwargs["group"] = gid
        user_kwargs["extra_groups"] = extra or [gid]
    return env, cwd, user_kwargs


def start_piped(spec: Spec, env: dict, cwd: str | None, user_kwargs: dict) -> tuple:
    """Popen the spec in its own session with the pipes its stdin/stdout/stderr modes ask for.

    -> (popen, {parent read fd: STDOUT or STDERR}, parent stdin fd or None). Raises SpawnError.
    """
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
                **user_kwargs,
            )
        except (OSError, ValueError, TypeError) as e:
            raise spawn_failure(e, spec.command, cwd) from None
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
    return popen, out_fds, stdin_parent

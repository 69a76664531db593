"""Validation of the request bodies that start processes: the Spec (what to run and how, enough to run it
again) and the supervision settings of a managed process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from errors import bad_request

if TYPE_CHECKING:
    from typing import TypeGuard  # python >= 3.10, but annotations are never evaluated here


class Spec:
    """A validated run/start request (everything needed to spawn, and to respawn)."""

    def __init__(self) -> None:
        self.command = ""
        self.args: list = []
        self.env: dict = {}
        self.working_dir: str | None = None
        self.timeout: float | None = None
        self.user: str | dict | None = None
        self.stdin_mode = "closed"
        self.stdout_mode = "capture"
        self.stderr_mode = "capture"


def is_int(v) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_spec(body: dict) -> Spec:
    """The Spec of a run/start body, its fields checked in this order. Raises HttpError 400 (bad_request)
    naming the first field that is wrong."""
    spec = Spec()
    spec.command = _command(body.get("command"))
    args = body.get("args")
    if args is not None:
        spec.args = _args(args)
    env = body.get("env")
    if env is not None:
        spec.env = _env(env)
    wd = body.get("working_dir")
    if wd is not None:
        if not isinstance(wd, str) or not wd or "\x00" in wd:
            raise bad_request("`working_dir` must be a non-empty string")
        spec.working_dir = wd
    timeout = body.get("timeout")
    if timeout is not None:
        if not is_number(timeout) or timeout < 0:
            raise bad_request("`timeout` must be a non-negative number of seconds")
        spec.timeout = float(timeout) if timeout > 0 else None
    user = body.get("user")
    if user is not None:
        spec.user = _user(user)
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


def _command(cmd) -> str:
    if not isinstance(cmd, str) or not cmd:
        raise bad_request("`command` is required and must be a non-empty string")
    if "\x00" in cmd:
        raise bad_request("`command` must not contain NUL bytes")
    return cmd


def _args(args) -> list:
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise bad_request("`args` must be a list of strings")
    if any("\x00" in a for a in args):
        raise bad_request("`args` must not contain NUL bytes")
    return list(args)


def _env(env) -> dict:
    if not isinstance(env, dict):
        raise bad_request("`env` must be an object of string values")
    for k, v in env.items():
        if not k or "=" in k or "\x00" in k:
            raise bad_request(f"invalid environment variable name {k!r}")
        if v is not None and not isinstance(v, str):
            raise bad_request(f"`env` values must be strings (env[{k!r}] is {type(v).__name__})")
        if isinstance(v, str) and "\x00" in v:
            raise bad_request("`env` values must not contain NUL bytes")
    return dict(env)


def _user(user) -> str | dict:
    """A user by name, or {"name"?, "uid"?, "gid"?} with a name or a uid."""
    if isinstance(user, str):
        if not user:
            raise bad_request("`user` must not be empty")
    elif isinstance(user, dict):
        for k in ("uid", "gid"):
            if user.get(k) is not None and (not is_int(user[k]) or user[k] < 0):
                raise bad_request(f"`user.{k}` must be a non-negative integer")
        if user.get("name") is not None and not isinstance(user["name"], str):
            raise bad_request("`user.name` must be a string")
        if user.get("name") is None and user.get("uid") is None:
            raise bad_request("`user` object needs `name` or `uid`")
    else:
        raise bad_request("`user` must be a string or an object")
    return user


def parse_managed(body: dict) -> dict | None:
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
        _copy_non_negative_ints(restart, rcfg, "restart", ("max_restarts", "initial_backoff_ms", "max_backoff_ms"))
    hcfg = None
    if hc is not None:
        if not isinstance(hc, dict):
            raise bad_request("`health_check` must be an object")
        if hc.get("type") not in ("http", "tcp"):
            raise bad_request("`health_check.type` must be http or tcp")
        port = hc.get("port")
        if not is_int(port) or not 1 <= port <= 65535:
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
        _copy_non_negative_ints(hc, hcfg, "health_check",
                                ("initial_delay_ms", "interval_ms", "timeout_ms", "failure_threshold"))
    return {"name": name, "restart": rcfg, "health_check": hcfg}


def _copy_non_negative_ints(src: dict, dst: dict, where: str, keys: tuple) -> None:
    """Copy the given optional keys of `src` into `dst`, each a non-negative integer (400 otherwise)."""
    for k in keys:
        v = src.get(k)
        if v is None:
            continue
        if not is_int(v) or v < 0:
            raise bad_request(f"`{where}.{k}` must be a non-negative integer")
        dst[k] = v

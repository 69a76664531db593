"""Emulator settings, read once from the environment (TLE_*)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path


def _default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/tensorlake-emulator/data"
    return str(Path.home() / ".local/share/tensorlake-emulator")


# (env var, attribute, default, help) — the single list that --help prints.
ENV_VARS: list[tuple[str, str, str, str]] = [
    ("TLE_BIND", "bind", "127.0.0.1", "address both servers listen on"),
    ("TLE_API_PORT", "api_port", "8900", "lifecycle API port"),
    ("TLE_PROXY_PORT", "proxy_port", "9443", "sandbox proxy (data plane) port"),
    ("TLE_PROXY_URL", "proxy_url", "", "sandbox_url advertised to the SDK (default http://localhost:<proxy port>)"),
    ("TLE_DATA_DIR", "data_dir", "", "folder for the state database, agent sockets and snapshots"),
    ("TLE_DEFAULT_IMAGE", "default_image", "tensorlake-emulator/sandbox:latest", "image used when none is given"),
    ("TLE_RUNTIME", "runtime", "runc", "OCI runtime for sandboxes: runc or runsc (gVisor)"),
    ("TLE_LOG_LEVEL", "log_level", "info", "debug, info, warning or error"),
    ("TLE_DOCKER_HOST", "docker_host", "unix:///var/run/docker.sock", "Docker Engine API endpoint"),
    ("TLE_DEFAULT_DISK_MB", "default_disk_mb", "10240", "disk_mb reported when a create gives none"),
    ("TLE_PIDS_LIMIT", "pids_limit", "4096", "pids cgroup limit per sandbox"),
    ("TLE_AGENT_OUTPUT_LIMIT_BYTES", "agent_output_limit", "16777216",
     "per-process output kept by the in-sandbox agent; older lines past it are dropped and reported"),
    ("TLE_STARTUP_TIMEOUT", "startup_timeout", "60", "seconds a sandbox may take to answer before it fails"),
    ("TLE_TERMINATE_ON_EXIT", "terminate_on_exit", "0", "1 = terminate every sandbox when the emulator stops"),
    ("TLE_CHECKPOINT", "checkpoint_mode", "auto",
     "auto, runc, docker or off: how suspend/checkpoint dump memory (auto: runc where it works)"),
    ("TLE_RUNC_ROOT", "runc_root", "/run/docker/runtime-runc/moby", "runc state folder of Docker's containers"),
    ("TLE_SESSION_LABEL", "session_label", "",
     "label every sandbox and snapshot with this session (as the X-TLE-Session header does); set by the pytest plugin"),
    ("TLE_API_KEY", "api_key", "",
     "when set, both ports require `Authorization: Bearer <key>` (the SDK sends TENSORLAKE_API_KEY so)"),
    ("TLE_ALLOWED_HOSTS", "allowed_hosts", "",
     "comma-separated host names accepted in Host and Origin besides localhost, 127.0.0.1, ::1, the bind "
     "address and TLE_PROXY_URL's host; `*` turns the Host and Origin checks off"),
    ("TLE_API_MAX_BODY_BYTES", "api_max_body_bytes", "1048576", "largest request body the lifecycle API reads"),
]


@dataclass(frozen=True)
class Settings:
    bind: str = "127.0.0.1"
    api_port: int = 8900
    proxy_port: int = 9443
    proxy_url: str = ""
    data_dir: Path = field(default_factory=lambda: Path(_default_data_dir()))
    default_image: str = "tensorlake-emulator/sandbox:latest"
    runtime: str = "runc"
    log_level: str = "info"
    docker_host: str = "unix:///var/run/docker.sock"
    default_disk_mb: int = 10240
    pids_limit: int = 4096
    agent_output_limit: int = 16 * 1024 * 1024
    startup_timeout: float = 60.0
    terminate_on_exit: bool = False
    checkpoint_mode: str = "auto"
    runc_root: Path = Path("/run/docker/runtime-runc/moby")
    session_label: str = ""
    api_key: str = field(default="", repr=False)  # a secret: kept out of reprs and logs
    allowed_hosts: str = ""
    api_max_body_bytes: int = 1024 * 1024

    @property
    def advertised_proxy_url(self) -> str:
        return self.proxy_url or f"http://localhost:{self.proxy_port}"

    @property
    def extra_hosts(self) -> tuple[str, ...]:
        """TLE_ALLOWED_HOSTS as lower-case host names (`*` kept as is)."""
        return tuple(h.strip().lower().rstrip(".") for h in self.allowed_hosts.split(",") if h.strip())

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, object] = {}
        for var, attr, default, _ in ENV_VARS:
            raw = env.get(var, default)
            if attr == "data_dir":
                values[attr] = Path(raw or _default_data_dir())
            elif attr == "runc_root":
                values[attr] = Path(raw)
            elif types[attr] in ("int", int):
                values[attr] = int(raw)
            elif types[attr] in ("float", float):
                values[attr] = float(raw)
            elif types[attr] in ("bool", bool):
                values[attr] = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                values[attr] = raw
        return cls(**values)  # type: ignore[arg-type]


def client_auth_headers(env: dict[str, str] | None = None) -> dict[str, str]:
    """Headers for the project's own clients of an emulator (CLI, session reaper): the key the SDK would send.

    TENSORLAKE_API_KEY as the SDK reads it, else TLE_API_KEY (the emulator's own setting); none when neither is set.
    """
    env = dict(os.environ if env is None else env)
    key = env.get("TENSORLAKE_API_KEY") or env.get("TLE_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def env_help() -> str:
    width = max(len(v) for v, *_ in ENV_VARS)
    lines = ["environment variables:"]
    for var, _, default, text in ENV_VARS:
        shown = default or ("/var/lib/tensorlake-emulator/data (root) or ~/.local/share/tensorlake-emulator"
                            if var == "TLE_DATA_DIR" else "-")
        lines.append(f"  {var.ljust(width)}  {text} [default: {shown}]")
    return "\n".join(lines)

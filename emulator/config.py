"""Emulator settings, read once from the environment (TLE_*)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


def _default_agent_dir() -> Path:
    """Where emulator/setup/agent-build.sh puts the in-sandbox agent: <repo>/build/agent in a source checkout,
    else (an installed package) a folder of the user's state, as the script chooses it too."""
    top = Path(__file__).resolve().parent.parent
    if (top / "agent" / "go.mod").is_file():
        return top / "build" / "agent"
    if os.geteuid() == 0:
        return Path("/var/lib/tensorlake-emulator/agent")
    return Path.home() / ".local/share/tensorlake-emulator/agent"


def _default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/tensorlake-emulator/data"
    return str(Path.home() / ".local/share/tensorlake-emulator")


class ConfigError(SystemExit):
    """A bad TLE_* value. A SystemExit, so every entry point (CLI, server, plugin) stops at start with
    this one line on stderr instead of a traceback."""


def _env(var: str, default: Any, text: str, **limits: Any) -> Any:
    """A setting: its environment variable, its default (written here only) and its --help text."""
    return Field(default, alias=var, description=text, **limits)


LogLevel = Literal["debug", "info", "warning", "error"]
CheckpointMode = Literal["auto", "runc", "docker", "off"]
Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseModel):
    """The emulator's settings. Defaults are written once, on the fields; `from_env` reads TLE_*.

    Built by attribute name in code (`Settings(data_dir=...)`), by variable name from the environment.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    bind: str = _env("TLE_BIND", "127.0.0.1", "address both servers listen on")
    api_port: Port = _env("TLE_API_PORT", 8900, "lifecycle API port")
    proxy_port: Port = _env("TLE_PROXY_PORT", 9443, "sandbox proxy (data plane) port")
    proxy_url: str = _env("TLE_PROXY_URL", "",
                          "sandbox_url advertised to the SDK (default http://localhost:<proxy port>)")
    data_dir: Path = _env("TLE_DATA_DIR", Path(_default_data_dir()),
                          "folder for the state database, agent sockets and snapshots")
    agent_dir: Path = _env("TLE_AGENT_DIR", _default_agent_dir(),
                           "folder holding the in-sandbox agent executable tle-agent (and an empty run/), "
                           "built by emulator/setup/agent-build.sh; mounted read-only at /.tle in every sandbox")
    default_image: str = _env("TLE_DEFAULT_IMAGE", "tensorlake-emulator/sandbox:latest",
                              "image used when none is given")
    runtime: str = _env("TLE_RUNTIME", "runc", "default OCI runtime for sandboxes: runc or runsc (gVisor); an image "
                        "suffix +runsc/+runc picks one per sandbox (docs/gvisor.md)", min_length=1)
    gvisor_host_egress: bool = _env("TLE_GVISOR_HOST_EGRESS", True,
                                    "1 = the egress rules of gVisor sandboxes are enforced on the host (where "
                                    "br_netfilter is on), so they run on gVisor's own network stack and can "
                                    "suspend; 0 = host networking, rules in the container's namespace "
                                    "(docs/gvisor.md)")
    log_level: LogLevel = _env("TLE_LOG_LEVEL", "info", "debug, info, warning or error")
    docker_host: str = _env("TLE_DOCKER_HOST", "unix:///var/run/docker.sock", "Docker Engine API endpoint")
    default_disk_mb: int = _env("TLE_DEFAULT_DISK_MB", 10240, "disk_mb reported when a create gives none", ge=1)
    pids_limit: int = _env("TLE_PIDS_LIMIT", 4096, "pids cgroup limit per sandbox", ge=16)
    agent_output_limit: int = _env("TLE_AGENT_OUTPUT_LIMIT_BYTES", 16 * 1024 * 1024,
                                   "per-process output kept by the in-sandbox agent; older lines past it are "
                                   "dropped and reported", ge=1024)
    startup_timeout: float = _env("TLE_STARTUP_TIMEOUT", 60.0,
                                  "seconds a sandbox may take to answer before it fails", gt=0)
    terminate_on_exit: bool = _env("TLE_TERMINATE_ON_EXIT", False,
                                   "1 = terminate every sandbox when the emulator stops")
    checkpoint_mode: CheckpointMode = _env("TLE_CHECKPOINT", "auto",
                                           "auto, runc, docker or off: how suspend/checkpoint dump memory "
                                           "(auto: runc where it works)")
    runc_root: Path = _env("TLE_RUNC_ROOT", Path("/run/docker/runtime-runc/moby"),
                           "runc state folder of Docker's containers")
    warm_reserve: int = _env("TLE_WARM_RESERVE", 2,
                             "idle containers of the default image and resources kept started, so a plain "
                             "create takes one in milliseconds; 0 = off", ge=0, le=32)
    session_label: str = _env("TLE_SESSION_LABEL", "",
                              "label every sandbox and snapshot with this session (as the X-TLE-Session header "
                              "does); set by the pytest plugin")
    api_key: str = _env("TLE_API_KEY", "", "when set, both ports require `Authorization: Bearer <key>` (the SDK "
                                           "sends TENSORLAKE_API_KEY so)", repr=False)  # a secret
    allowed_hosts: str = _env("TLE_ALLOWED_HOSTS", "",
                              "comma-separated host names accepted in Host and Origin besides localhost, "
                              "127.0.0.1, ::1, the bind address and TLE_PROXY_URL's host; `*` turns the Host "
                              "and Origin checks off")
    api_max_body_bytes: int = _env("TLE_API_MAX_BODY_BYTES", 1024 * 1024,
                                   "largest request body the lifecycle API reads", ge=1024)
    image_base_aliases: str = _env("TLE_IMAGE_BASE_ALIASES", "python=default,python:*=default",
                                   "image builds: FROM references that are not local images, mapped to local ones "
                                   "(`pattern=image,...`, fnmatch patterns; `default` is TLE_DEFAULT_IMAGE); no "
                                   "registry is reachable, so any other missing base fails the build")
    image_max_context_bytes: int = _env("TLE_IMAGE_MAX_CONTEXT_BYTES", 2 * 1024 ** 3,
                                        "largest build context an image build may upload", ge=1024)
    request_log_size: int = _env("TLE_REQUEST_LOG_SIZE", 10_000,
                                 "requests kept by the request log (GET /emulator/requests); the oldest go first",
                                 ge=1, le=1_000_000)

    @property
    def advertised_proxy_url(self) -> str:
        return self.proxy_url or f"http://localhost:{self.proxy_port}"

    @property
    def extra_hosts(self) -> tuple[str, ...]:
        """TLE_ALLOWED_HOSTS as lower-case host names (`*` kept as is)."""
        return tuple(h.strip().lower().rstrip(".") for h in self.allowed_hosts.split(",") if h.strip())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from TLE_* variables (an empty value means the default).

        Raises ConfigError with one line naming the variable, its value and what is accepted.
        """
        env = os.environ if env is None else env
        given = {var: env[var] for var in ENV_VARS if env.get(var, "").strip() != ""}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            err = exc.errors()[0]
            var = str(err["loc"][0])
            raise ConfigError(f"tensorlake-emulator: {var}={given.get(var, '')!r} is not valid: "
                              f"{err['msg']}") from None


def require_agent(settings: Settings) -> Path:
    """The in-sandbox agent executable (<agent_dir>/tle-agent), checked before anything starts a sandbox.

    Raises ConfigError naming the missing file and how to build it.
    """
    exe = settings.agent_dir / "tle-agent"
    if not (exe.is_file() and os.access(exe, os.X_OK) and (settings.agent_dir / "run").is_dir()):
        raise ConfigError(f"tensorlake-emulator: the in-sandbox agent {exe} (and the empty folder run/ next to it) "
                          "is missing: build it with `tensorlake-emulator setup` (emulator/setup/agent-build.sh; "
                          "`./run start` and `./run test` do), or point TLE_AGENT_DIR at a folder holding it")
    return exe


# variable -> attribute, in the order --help prints them
ENV_VARS: dict[str, str] = {str(f.alias): name for name, f in Settings.model_fields.items()}


def client_auth_headers(env: dict[str, str] | None = None) -> dict[str, str]:
    """Headers for the project's own clients of an emulator (CLI, session reaper): the key the SDK would send.

    TENSORLAKE_API_KEY as the SDK reads it, else TLE_API_KEY (the emulator's own setting); none when neither is set.
    """
    env = dict(os.environ if env is None else env)
    key = env.get("TENSORLAKE_API_KEY") or env.get("TLE_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def env_help() -> str:
    """The --help text of every variable, with its default."""
    width = max(len(v) for v in ENV_VARS)
    lines = ["environment variables:"]
    for var, attr in ENV_VARS.items():
        field = Settings.model_fields[attr]
        default = field.default
        shown = ("/var/lib/tensorlake-emulator/data (root) or ~/.local/share/tensorlake-emulator"
                 if var == "TLE_DATA_DIR" else str(int(default) if isinstance(default, bool) else default) or "-")
        lines.append(f"  {var.ljust(width)}  {field.description} [default: {shown}]")
    return "\n".join(lines)

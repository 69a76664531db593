"""Field types of the lifecycle requests, each limited to what the SDK can read back (issue 9, kind 6).

Whatever a request stores is later served in SandboxInfo to every `Sandbox.list()` of its namespace,
and the SDK's Rust client rejects the whole list when one field does not fit its type. Its types,
found by serving each value to the pinned SDK (tests/test_validation.py keeps that true):
`exposed_ports` are u16, `timeout_secs`, `memory_mb` and `disk_mb` are i64, a GPU `count` is u32.
Within those, the limits below are the service's rules (docs/protocol.md §6.1, §15): ports 1..65535
and not 9501, names that fit a DNS-ish label, Docker image references, finite positive CPUs.

Every type here rejects NUL and unpaired surrogates in strings: neither can be stored as UTF-8 JSON,
nor passed to Docker or a process.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated

from pydantic import AfterValidator, Field, StrictFloat, StrictInt, StrictStr

from emulator.errors import BadRequest
from emulator.model.runtimes import split_image

I64_MAX = 2**63 - 1
U32_MAX = 2**32 - 1
# Seconds the emulator counts in milliseconds on a 64-bit clock: ~68 years is far past any real use.
MAX_SECONDS = 2**31 - 1
RESERVED_PORT = 9501  # the sandbox management port (docs/protocol.md §1.1)
MAX_ENTRYPOINT_ARGS = 1024
# The entrypoint reaches the agent as one environment variable; Linux caps one at 128 KiB.
MAX_ENTRYPOINT_BYTES = 64 * 1024
MAX_NETWORK_RULES = 1024
MAX_IMAGE_REF = 255 + 1 + 128 + 1 + 71 + 64  # name, tag and a sha512 digest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", re.ASCII)
_SANDBOX_ID = re.compile(r"[0-9a-f]{20}", re.ASCII)  # model/ids.py: names must never look like one
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?", re.ASCII)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)

# Docker's reference grammar (github.com/distribution/reference, regexp.go).
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*", re.ASCII)
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
# (No bracketed IPv6 registries: the engine this was checked against refuses them.)
_DOMAIN = re.compile(rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?", re.ASCII)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}", re.ASCII)


def check_text(value: str) -> str:
    """A string that can be stored and handed on: no NUL, no unpaired surrogate. Raises ValueError."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (an unpaired surrogate was sent)") from None
    return value


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError("use 1-63 letters, digits, '-' or '_', starting with a letter or digit")
    if _SANDBOX_ID.fullmatch(value):
        raise ValueError("20 lower-case hex characters is the form of a sandbox id; a name cannot take it")
    return value


def _port(value: int) -> int:
    if value == RESERVED_PORT:
        raise ValueError(f"port {RESERVED_PORT} is reserved for sandbox management")
    return value


def _ports(values: list[int]) -> list[int]:
    return sorted(set(values))  # as the SDK sends them: deduplicated and sorted


def image_reference_problem(ref: str) -> str | None:
    """Why ref is not a Docker image reference (`[domain/]path[:tag][@digest]`), or None when it is one."""
    if not ref or len(ref) > MAX_IMAGE_REF:
        return f"must be 1-{MAX_IMAGE_REF} characters"
    rest, _, digest = ref.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        return f"digest {digest!r} is not <algorithm>:<hex>"
    head, slash, tail = rest.partition("/")
    # Docker takes the first component as a registry only when it looks like one (splitDockerDomain).
    has_domain = bool(slash) and ("." in head or ":" in head or head == "localhost")
    path = tail if has_domain else rest
    if has_domain and not _DOMAIN.fullmatch(head):
        return f"registry {head!r} is not a host name with an optional port"
    name, colon, tag = path.rpartition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "")
    if colon and not _TAG.fullmatch(tag):
        return f"tag {tag!r} must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
    if len((head + slash if has_domain else "") + name) > 255:
        return "the repository name is longer than 255 characters"
    if not _PATH.fullmatch(name):
        return (f"repository {name!r} must be lower-case components of [a-z0-9] joined by '.', '_', '__' "
                "or '-', separated by '/'")
    return None


def _image(value: str) -> str:
    """An image reference, optionally with a runtime suffix (`+runsc`; model/runtimes.py, docs/gvisor.md)."""
    try:
        name, _ = split_image(value)
    except BadRequest as exc:
        raise ValueError(exc.message) from None
    problem = image_reference_problem(name)
    if problem:
        raise ValueError(f"invalid image reference {name!r}: {problem}")
    return value


def _network_target(value: str) -> str:
    """An allow_out/deny_out rule: an IP address or CIDR, or a host name, with an optional :port."""
    check_text(value)
    host, port = value, ""
    if value.count(":") == 1:  # more than one is an IPv6 address, which takes no port here
        host, port = value.split(":")
        if not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
            raise ValueError(f"{value!r}: the port must be 1-65535")
    try:
        ipaddress.ip_network(host, strict=False)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{value!r} is not an IP address, a CIDR range or a host name")
    return value


def _entrypoint(values: list[str]) -> list[str]:
    if values and not values[0]:
        raise ValueError("the command (first element) must not be empty")
    if sum(len(v.encode()) + 4 for v in values) > MAX_ENTRYPOINT_BYTES:
        raise ValueError(f"is longer than {MAX_ENTRYPOINT_BYTES} bytes in all")
    return values


Text = Annotated[StrictStr, AfterValidator(check_text)]
SandboxName = Annotated[StrictStr, AfterValidator(_name)]
ImageRef = Annotated[StrictStr, AfterValidator(_image)]
SnapshotId = Annotated[StrictStr, Field(min_length=1, max_length=128), AfterValidator(check_text)]
Port = Annotated[StrictInt, Field(ge=1, le=65535), AfterValidator(_port)]
Ports = Annotated[list[Port], Field(max_length=65535), AfterValidator(_ports)]
Seconds = Annotated[StrictInt, Field(ge=0, le=MAX_SECONDS)]
MiB = Annotated[StrictInt, Field(ge=1, le=I64_MAX)]
Cpus = Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)]
GpuCount = Annotated[StrictInt, Field(ge=1, le=U32_MAX)]
GpuModel = Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(check_text)]
Entrypoint = Annotated[list[Annotated[StrictStr, AfterValidator(check_text)]],
                       Field(max_length=MAX_ENTRYPOINT_ARGS), AfterValidator(_entrypoint)]
NetworkRules = Annotated[list[Annotated[StrictStr, AfterValidator(_network_target)]],
                         Field(max_length=MAX_NETWORK_RULES)]


# ---- path, query and header values ---------------------------------------------------------------


def namespace(value: str) -> str:
    """The {namespace} of a path, which every record of it stores. Raises BadRequest."""
    if not _NAMESPACE.fullmatch(value):
        raise BadRequest(f"Invalid namespace {value[:80]!r}: use 1-128 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return value


def milliseconds(raw: str | None, what: str, *, default: float | None, upper: float) -> float | None:
    """A non-negative, finite millisecond count from a query or header value, capped at upper.

    None (absent) gives default. Raises BadRequest for anything else that is not such a number.
    """
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{what} must be a number of milliseconds; got {raw[:40]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise BadRequest(f"{what} must be a finite number >= 0; got {raw[:40]!r}")
    return min(value, upper)


def session_label(raw: str | None) -> str | None:
    """The X-TLE-Session header: a Docker label value, so printable and short. Raises BadRequest."""
    if raw is None or raw == "":
        return None
    if len(raw) > 128 or not raw.isprintable():
        raise BadRequest("X-TLE-Session must be at most 128 printable characters")
    return raw

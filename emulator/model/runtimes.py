"""Which OCI runtime a sandbox runs under, and how a create names it (docs/gvisor.md).

The unmodified SDK has no runtime argument, so the runtime rides on the image name: a suffix
`+runsc` (or `+gvisor`) or `+runc` after the image reference, e.g. `tensorlake/ubuntu-minimal+runsc`
or `python:3.12+runsc`. `+` cannot occur in a Docker image reference, so the suffix never collides
with a real image. No suffix means the emulator's default (TLE_RUNTIME). A pool's image takes the
suffix too, so a pool is all-gVisor or all-runc. A snapshot keeps its sandbox's runtime and every
restore of it uses that runtime (a gVisor checkpoint can only be restored by gVisor).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from emulator.errors import BadRequest

RUNC = "runc"
RUNSC = "runsc"
# Docker's runtime for gVisor sandboxes without internet access: runsc with --network=none, which runsc can
# checkpoint (it refuses with host networking); registered by emulator/setup/gvisor-install.sh.
RUNSC_NONET = "runsc-nonet"
# Docker's runtime for gVisor sandboxes with internet access: gVisor's own network stack (--network=sandbox), which
# runsc checkpoints too (a patched copy of runsc: emulator/setup/gvisor-install.sh); egress rules of such a sandbox
# are enforced on the host (backend/egress_host.py).
RUNSC_NETSTACK = "runsc-netstack"
# the Docker runtimes of gVisor sandboxes that runsc can checkpoint (emulator/checkpoints/gvisor.py)
GVISOR_CHECKPOINTABLE = (RUNSC_NONET, RUNSC_NETSTACK)
KNOWN = (RUNC, RUNSC)
_ALIASES = {"runc": RUNC, "runsc": RUNSC, "gvisor": RUNSC}


def split_image(image: str) -> tuple[str, str | None]:
    """`"img:tag+runsc"` -> `("img:tag", "runsc")`; no suffix -> `(image, None)`.

    Raises BadRequest for an unknown suffix (naming the accepted ones).
    """
    name, sep, suffix = image.rpartition("+")
    if not sep:
        return image, None
    runtime = _ALIASES.get(suffix.strip().lower())
    if runtime is None or not name:
        raise BadRequest(f"image '{image}': unknown runtime suffix '+{suffix}' (use +runsc, +gvisor or +runc, "
                         "or no suffix for the emulator's default)")
    return name, runtime


def image_runtime(image: str, default: str) -> tuple[str, str]:
    """The Docker image and the runtime a sandbox of `image` runs with (`default` when no suffix)."""
    name, runtime = split_image(image)
    return name, runtime or default


def gvisor_offline(policy: dict[str, Any] | None) -> bool:
    """A network policy with no internet access and nothing allowed out (manager/egress.py's offline_only):
    a gVisor sandbox of it runs under RUNSC_NONET and can be checkpointed."""
    return policy is not None and policy.get("allow_internet_access") is False and not policy.get("allow_out")


def gvisor_open(policy: dict[str, Any] | None) -> bool:
    """A network policy that limits nothing (internet access, no allow_out, no deny_out): a gVisor sandbox of
    it runs on gVisor's own network stack (RUNSC_NETSTACK), which needs no rules in the host's namespace."""
    return (not policy or (policy.get("allow_internet_access") is not False and not policy.get("allow_out")
                           and not policy.get("deny_out")))


def docker_runtime(runtime: str, policy: dict[str, Any] | None, checkpointable: Collection[str],
                   host_rules: bool = False) -> str:
    """Docker's runtime for a new container of a sandbox of `runtime` with network `policy`, where Docker has the
    gVisor runtimes `checkpointable` (a subset of GVISOR_CHECKPOINTABLE, empty when gVisor checkpoints are off)
    and `host_rules` says whether egress rules can be enforced on the host (backend/egress_host.py).

    A gVisor sandbox without internet access: RUNSC_NONET; one that limits nothing, or any other one where
    `host_rules`: RUNSC_NETSTACK; one with egress rules (allow_out / deny_out) where the host cannot enforce them:
    RUNSC, host networking, whose rules live in its namespace (docs/gvisor.md). Each only where Docker has it; a
    runc sandbox: `runtime`.
    """
    if runtime != RUNSC:
        return runtime
    if gvisor_offline(policy) and RUNSC_NONET in checkpointable:
        return RUNSC_NONET
    if (gvisor_open(policy) or host_rules) and RUNSC_NETSTACK in checkpointable:
        return RUNSC_NETSTACK
    return RUNSC


def used_runtime(docker_runtime: str | None, policy: dict[str, Any] | None) -> str:
    """The Docker runtime a gVisor sandbox's container runs under: its record's `docker_runtime`, or for records
    from before that field, runsc-nonet for one without internet access and runsc for the rest (as then)."""
    return docker_runtime or (RUNSC_NONET if gvisor_offline(policy) else RUNSC)


def describe(installed: list[str], default: str, criu_ok: bool,
             gvisor_runtimes: Collection[str] = (), host_rules: bool = False) -> dict[str, dict[str, object]]:
    """`/emulator/capabilities` "runtimes": for each known runtime, whether Docker has it, whether it is
    the default, how a create picks it, and what a sandbox of it supports here (docs/gvisor.md).
    `gvisor_runtimes`: the checkpointable gVisor runtimes in use (GVISOR_CHECKPOINTABLE, where Docker has them);
    `host_rules`: whether egress rules of gVisor sandboxes are enforced on the host (docker_runtime)."""
    common = {"processes": True, "files": True, "pty": True, "tunnels": True, "networking": True,
              "egress_rules": True, "cpu_memory_limits": True, "filesystem_snapshots": True}
    out: dict[str, dict[str, object]] = {}
    # gVisor's own checkpoint (not CRIU), for the sandboxes of its checkpointable runtimes (docs/gvisor.md)
    gvisor_ckpt: object = False
    if RUNSC_NETSTACK in gvisor_runtimes and host_rules:
        gvisor_ckpt = True  # every gVisor sandbox runs on gVisor's own stack or none
    elif RUNSC_NETSTACK in gvisor_runtimes:
        gvisor_ckpt = ("without egress rules (allow_out / deny_out)" if RUNSC_NONET in gvisor_runtimes
                       else "with internet access and no egress rules")
    elif RUNSC_NONET in gvisor_runtimes:
        gvisor_ckpt = "without internet access"
    for name in KNOWN:
        gvisor = name == RUNSC
        out[name] = {
            "installed": name in installed, "default": name == default,
            "select": f"image suffix +{name}" + (" or +gvisor" if gvisor else "") + ", or TLE_RUNTIME",
            "supports": {**common, "memory_snapshots": gvisor_ckpt if gvisor else criu_ok,
                         "suspend_resume": gvisor_ckpt if gvisor else criu_ok, "oom_keeps_sandbox": not gvisor},
        }
        if gvisor:
            rules = ("its allow_out/deny_out rules are enforced on the host (iptables, br_netfilter)" if host_rules
                     else "one with allow_out/deny_out runs with host networking in the container's own namespace "
                          "(iptables rules), which runsc cannot checkpoint")
            out[name]["notes"] = ("a sandbox with internet access runs on gVisor's own network stack (runtime "
                                  "runsc-netstack; a checkpoint drops its open TCP connections), one without internet "
                                  "access and nothing allowed out with --network=none (runsc-nonet): both suspend and "
                                  f"take memory snapshots through runsc's own checkpoint; {rules}; an out-of-memory "
                                  "ends the whole sandbox")
    return out

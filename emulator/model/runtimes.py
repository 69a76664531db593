"""Which OCI runtime a sandbox runs under, and how a create names it (docs/gvisor.md).

The unmodified SDK has no runtime argument, so the runtime rides on the image name: a suffix
`+runsc` (or `+gvisor`) or `+runc` after the image reference, e.g. `tensorlake/ubuntu-minimal+runsc`
or `python:3.12+runsc`. `+` cannot occur in a Docker image reference, so the suffix never collides
with a real image. No suffix means the emulator's default (TLE_RUNTIME). A pool's image takes the
suffix too, so a pool is all-gVisor or all-runc. A snapshot keeps its sandbox's runtime and every
restore of it uses that runtime (a gVisor checkpoint can only be restored by gVisor).
"""

from __future__ import annotations

from typing import Any

from emulator.errors import BadRequest

RUNC = "runc"
RUNSC = "runsc"
# Docker's runtime for gVisor sandboxes without internet access: runsc with --network=none, which runsc can
# checkpoint (it refuses with host networking); registered by emulator/setup/gvisor-install.sh.
RUNSC_NONET = "runsc-nonet"
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


def docker_runtime(runtime: str, offline: bool, nonet: bool) -> str:
    """Docker's runtime for a sandbox of `runtime`: a gVisor sandbox without internet access (`offline`)
    runs under RUNSC_NONET where gVisor checkpoints are in use (`nonet`: Docker has RUNSC_NONET and
    checkpoints are on; docs/gvisor.md), every other one under `runtime`."""
    return RUNSC_NONET if runtime == RUNSC and offline and nonet else runtime


def describe(installed: list[str], default: str, criu_ok: bool,
             gvisor_ok: bool = False) -> dict[str, dict[str, object]]:
    """`/emulator/capabilities` "runtimes": for each known runtime, whether Docker has it, whether it is
    the default, how a create picks it, and what a sandbox of it supports here (docs/gvisor.md)."""
    common = {"processes": True, "files": True, "pty": True, "tunnels": True, "networking": True,
              "egress_rules": True, "cpu_memory_limits": True, "filesystem_snapshots": True}
    out: dict[str, dict[str, object]] = {}
    # gVisor's own checkpoint (not CRIU), for sandboxes without internet access only (docs/gvisor.md)
    gvisor_ckpt: object = "without internet access" if gvisor_ok else False
    for name in KNOWN:
        gvisor = name == RUNSC
        out[name] = {
            "installed": name in installed, "default": name == default,
            "select": f"image suffix +{name}" + (" or +gvisor" if gvisor else "") + ", or TLE_RUNTIME",
            "supports": {**common, "memory_snapshots": gvisor_ckpt if gvisor else criu_ok,
                         "suspend_resume": gvisor_ckpt if gvisor else criu_ok, "oom_keeps_sandbox": not gvisor},
        }
        if gvisor:
            out[name]["notes"] = ("gVisor with host networking in the container's own namespace (runsc's own "
                                  "stack cannot start on this kernel), which runsc cannot checkpoint; a sandbox "
                                  "without internet access "
                                  "runs with --network=none (runtime runsc-nonet) and suspends and takes memory "
                                  "snapshots through runsc's own checkpoint; "
                                  "an out-of-memory ends the whole sandbox")
    return out

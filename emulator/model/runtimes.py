"""Which OCI runtime a sandbox runs under, and how a create names it (docs/gvisor.md).

The unmodified SDK has no runtime argument, so the runtime rides on the image name: a suffix
`+runsc` (or `+gvisor`) or `+runc` after the image reference, e.g. `tensorlake/ubuntu-minimal+runsc`
or `python:3.12+runsc`. `+` cannot occur in a Docker image reference, so the suffix never collides
with a real image. No suffix means the emulator's default (TLE_RUNTIME). A pool's image takes the
suffix too, so a pool is all-gVisor or all-runc. A snapshot keeps its sandbox's runtime and every
restore of it uses that runtime (a gVisor checkpoint can only be restored by gVisor).
"""

from __future__ import annotations

from emulator.errors import BadRequest

RUNC = "runc"
RUNSC = "runsc"
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


def describe(installed: list[str], default: str, criu_ok: bool) -> dict[str, dict[str, object]]:
    """`/emulator/capabilities` "runtimes": for each known runtime, whether Docker has it, whether it is
    the default, how a create picks it, and what a sandbox of it supports here (docs/gvisor.md)."""
    common = {"processes": True, "files": True, "pty": True, "tunnels": True, "networking": True,
              "egress_rules": True, "cpu_memory_limits": True, "filesystem_snapshots": True}
    out: dict[str, dict[str, object]] = {}
    for name in KNOWN:
        gvisor = name == RUNSC
        out[name] = {
            "installed": name in installed, "default": name == default,
            "select": f"image suffix +{name}" + (" or +gvisor" if gvisor else "") + ", or TLE_RUNTIME",
            "supports": {**common, "memory_snapshots": criu_ok and not gvisor, "suspend_resume": criu_ok and not gvisor,
                         "oom_keeps_sandbox": not gvisor},
        }
        if gvisor:
            out[name]["notes"] = ("gVisor with host networking in the container's own namespace (runsc's own "
                                  "stack cannot start on this kernel); host runsc cannot checkpoint it; "
                                  "an out-of-memory ends the whole sandbox")
    return out

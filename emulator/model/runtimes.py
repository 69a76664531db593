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

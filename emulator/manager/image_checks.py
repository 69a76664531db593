"""Checks of a sandbox's image before and while it starts: present, of the host's platform, and holding
the entrypoint asked for. Each failure is a typed 400 whose message says what to do (issue 13)."""

from __future__ import annotations

from emulator.backend.base import ImageFacts
from emulator.errors import EntrypointNotFound, ImageIncompatible, ImageNotFound
from emulator.manager.context import ManagerContext

# Docker gives a container this PATH when its image sets none (and the agent inherits it).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


async def check_image(ctx: ManagerContext, image: str) -> ImageFacts:
    """The image's facts once it is known to run here. Raises ImageNotFound (not in the local engine: no
    registry is reachable) or ImageIncompatible (another OS or architecture: sandboxes run natively)."""
    facts = await ctx.backend.image_facts(image)
    if facts is None:
        raise ImageNotFound(f"Image '{image}' not found locally; no registry is reachable, so build or "
                            "load it into Docker first (docker images lists what is there)")
    host = ctx.engine.arch if ctx.engine is not None else ""
    if (facts.os and facts.os != "linux") or (host and facts.arch and facts.arch != host):
        raise ImageIncompatible(
            f"Image '{image}' is built for {facts.os or '?'}/{facts.arch or '?'}, but this host runs "
            f"linux/{host or '?'}: sandboxes run natively, without emulation, so build or load the image "
            f"for linux/{host or '?'} (e.g. docker build --platform linux/{host or '?'})")
    return facts


async def check_entrypoint(ctx: ManagerContext, container_id: str, image: str, argv0: str) -> None:
    """Raise EntrypointNotFound when the created (not yet started) container has no `argv0`: that path,
    or for a bare name no file of that name in a folder of the image's PATH (as the agent resolves it).
    A relative path with a slash depends on the working folder and is left to the agent."""
    if "/" in argv0 and not argv0.startswith("/"):
        return
    facts = await ctx.backend.image_facts(image)
    path = (facts.path if facts is not None else "") or DEFAULT_PATH
    candidates = [argv0] if "/" in argv0 else [f"{d.rstrip('/')}/{argv0}" for d in path.split(":") if d]
    for candidate in candidates:
        if await ctx.backend.path_exists(container_id, candidate):
            return
    where = f"'{argv0}' does not exist" if "/" in argv0 else f"'{argv0}' is in no folder of its PATH ({path})"
    raise EntrypointNotFound(f"The entrypoint is not in image '{image}': {where}; give the full path of a "
                             "program the image has")

"""`serve` (foreground) and the checks that come before it: each failure is one line, cheapest first.

Order: the two ports are free (milliseconds), the data folder is not locked by another emulator
(milliseconds), Docker answers (milliseconds), the default image exists (one API call). Only then
does the emulator start its slow work (the CRIU start-up probe, reconciling its sandboxes).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import socket
import subprocess
from pathlib import Path

from emulator import datalock
from emulator.cli.common import fail, say
from emulator.config import Settings

SETUP_SCRIPT = Path(__file__).resolve().parent.parent / "setup" / "host-setup.sh"


class PreflightError(RuntimeError):
    """A check before start-up failed; the message is the one line to print."""


def setup() -> int:
    """Run the idempotent host set-up script; returns its exit status."""
    return subprocess.call(["bash", str(SETUP_SCRIPT)])


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (bound the way uvicorn binds: SO_REUSEADDR, so TIME_WAIT is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def preflight(settings: Settings) -> datalock.DataDirLock:
    """The cheap checks, in order; returns the data folder's lock, held. Raises PreflightError."""
    for name, port, var in (("lifecycle API", settings.api_port, "TLE_API_PORT"),
                            ("sandbox proxy", settings.proxy_port, "TLE_PROXY_PORT")):
        if not port_free(settings.bind, port):
            raise PreflightError(f"port {port} ({name}) on {settings.bind} is already in use; stop what listens "
                                 f"there (`tensorlake-emulator status` shows an emulator) or set {var}")
    host = "localhost" if settings.bind in ("127.0.0.1", "0.0.0.0") else settings.bind
    api_url = f"http://{host}:{settings.api_port}"
    try:
        lock = datalock.DataDirLock(settings.data_dir).acquire(api_url)
    except datalock.DataDirLocked as exc:
        raise PreflightError(str(exc)) from None
    from docker.errors import ImageNotFound

    from sdk_shim import docker_sweep

    try:
        docker = docker_sweep.client(settings.docker_host, timeout=10)
    except docker_sweep.DockerUnreachable as exc:
        lock.release()
        raise PreflightError(str(exc)) from None
    try:
        docker.api.inspect_image(settings.default_image)
    except ImageNotFound:
        say(f"warning: the default image {settings.default_image} is missing: run `tensorlake-emulator setup` "
            "(creates without an image, and memory checkpoints, need it)")
    finally:
        docker.close()
    return lock


def serve(args: argparse.Namespace) -> int:
    """Check, then run both servers in the foreground until SIGINT/SIGTERM. Exit 1 with one line on failure."""
    if getattr(args, "setup", False) and setup() != 0:
        return 1
    settings = Settings.from_env()
    try:
        lock = preflight(settings)
    except PreflightError as exc:
        return fail(str(exc))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve_main(settings))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # taken between the check and the bind
            return fail(f"a port is already in use: {exc.strerror}; set TLE_API_PORT / TLE_PROXY_PORT")
        raise
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind, after logging why
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    finally:
        lock.release()
    return 0


async def serve_main(settings: Settings) -> None:
    from emulator.server import serve as run_server

    await run_server(settings)

"""tensorlake-emulator: serve the emulator, set the host up, inspect and clean up."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

from emulator.config import Settings, env_help

SETUP_SCRIPT = Path(__file__).resolve().parent / "setup" / "host-setup.sh"


def _setup() -> int:
    return subprocess.call(["bash", str(SETUP_SCRIPT)])


def _serve(args: argparse.Namespace) -> int:
    if args.setup and _setup() != 0:
        return 1
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve_main(settings))
    except KeyboardInterrupt:
        pass
    return 0


async def serve_main(settings: Settings) -> None:
    from emulator.server import serve

    await serve(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensorlake-emulator",
        description="A local, offline emulator of the Tensorlake sandbox service.",
        epilog=env_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("serve", help="run the lifecycle API and the sandbox proxy (default)",
                       epilog=env_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", action="store_true", help="run the idempotent host set-up first")
    sub.add_parser("setup", help="install and start what the host lacks (Docker, CRIU, image, venv)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command in (None, "serve"):
        if args.command is None:
            args.setup = False
        sys.exit(_serve(args))
    if args.command == "setup":
        sys.exit(_setup())
    sys.exit(f"unknown command {args.command}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

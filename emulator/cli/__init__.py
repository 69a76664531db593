"""tensorlake-emulator: serve the emulator, set the host up, inspect and clean up.

Arguments are parsed with argparse (the standard library's parser): the commands are few and flat, and
click (present only as uvicorn's dependency) would add a direct dependency for no gain.
"""

from __future__ import annotations

import argparse
import sys

from emulator.config import env_help

CLIENT_ENV_HELP = """client-side variables (status, list, cleanup and the pytest plugin):
  TLE_EMULATOR_URL  the emulator to talk to [default: http://localhost:<TLE_API_PORT>]
  TLE_SESSIONS_DIR  where pytest sessions keep their records [default: ~/.local/state/tensorlake-emulator/sessions]
  INDEXIFY_NAMESPACE  the namespace `list` shows [default: default]"""


# ---- the parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    epilog = env_help() + "\n\n" + CLIENT_ENV_HELP
    parser = argparse.ArgumentParser(
        prog="tensorlake-emulator",
        description="A local, offline emulator of the Tensorlake sandbox service.",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("serve", help="run the lifecycle API and the sandbox proxy (default)",
                       epilog=env_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", action="store_true", help="run the idempotent host set-up first")
    sub.add_parser("setup", help="install and start what the host lacks (Docker engine, CRIU, default image)")
    p = sub.add_parser("start", help="start an emulator in the background (log in <data dir>/emulator.log)",
                       epilog=env_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to answer [default: 60]")
    p = sub.add_parser("stop", help="stop the emulator serving TLE_DATA_DIR")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to stop [default: 60]")
    p = sub.add_parser("logs", help="print the background emulator's log")
    p.add_argument("-n", "--lines", type=int, default=50, help="how many last lines (0: all) [default: 50]")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended")

    p = sub.add_parser("status", help="Docker engine, CRIU, images, sandboxes, and the emulator if one answers",
                       epilog=CLIENT_ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="the emulator's lifecycle API [default: TLE_EMULATOR_URL or localhost:TLE_API_PORT]")
    p.add_argument("--data-dir", help="the data dir whose instance to mark [default: TLE_DATA_DIR]")

    p = sub.add_parser("list", help="sandboxes and snapshots of a running emulator (through its HTTP API)",
                       epilog=CLIENT_ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="the emulator's lifecycle API [default: TLE_EMULATOR_URL or localhost:TLE_API_PORT]")
    p.add_argument("-n", "--namespace", action="append", help="namespace to list (repeatable) [default: default]")
    p.add_argument("-a", "--all", action="store_true", help="include terminated sandboxes")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("cleanup", help="remove sandbox containers and snapshot images by label",
                       description="Remove the containers and snapshot images an emulator made, selected by "
                                   "label: by default those of this data dir's instance; with --session those of "
                                   "one test session. Nothing without the label is touched. What a running "
                                   "emulator owns is deleted through its API, so its records stay true.",
                       epilog=CLIENT_ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--session", metavar="LABEL", help="only what the test session LABEL made")
    p.add_argument("--data-dir", help="the data dir whose instance to clean [default: TLE_DATA_DIR]")
    p.add_argument("--stale", action="store_true",
                   help="reap dead pytest sessions (stop their emulators, remove their sandboxes, snapshots and "
                        "data dirs); alone, does only that")
    p.add_argument("--instance", dest="instance_only", action="store_true",
                   help="with --stale: also clean this data dir's instance")
    p.add_argument("--force", action="store_true",
                   help="with --session: remove the sandboxes of a session that is still running")
    p.add_argument("--dry-run", action="store_true", help="only show what would be removed; changes nothing")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse argv (default sys.argv) and exit with the command's status."""
    from emulator.cli import background, cleanup, inspect, serve

    args = build_parser().parse_args(argv)
    if args.command is None:
        args.command, args.setup = "serve", False
    commands = {"serve": serve.serve, "setup": lambda _a: serve.setup(), "start": background.start,
                "stop": background.stop, "logs": background.logs, "status": inspect.status,
                "list": inspect.list_, "cleanup": cleanup.cleanup}
    sys.exit(commands[args.command](args))

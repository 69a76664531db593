"""`start`, `stop` and `logs`: an emulator in the background, found again through its data folder's lock.

`start` runs `tensorlake-emulator serve` detached (its own session, so it outlives the shell), logging to
`<data dir>/emulator.log`, and waits until both ports answer. `stop` signals whichever emulator holds
the data folder's lock (see emulator/datalock.py), so it also stops one started another way. `status`
(inspect.py) reports it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from emulator import datalock
from emulator.cli.common import answers, fail, say
from emulator.cli.serve import PreflightError, port_free
from emulator.config import Settings

LOG_NAME = "emulator.log"


def _serve_command() -> list[str]:
    exe = shutil.which("tensorlake-emulator", path=str(Path(sys.executable).parent))
    return [exe, "serve"] if exe else [sys.executable, "-m", "emulator.cli", "serve"]


def log_path(settings: Settings) -> Path:
    return settings.data_dir / LOG_NAME


def start(args: argparse.Namespace) -> int:
    """Start a background emulator for TLE_DATA_DIR and wait up to --timeout s for it to answer."""
    settings = Settings.from_env()
    running = datalock.owner(settings.data_dir)
    if running is not None:
        say(f"an emulator already serves {settings.data_dir}: pid {running.pid}, {running.api_url}")
        return 0
    for port, var in ((settings.api_port, "TLE_API_PORT"), (settings.proxy_port, "TLE_PROXY_PORT")):
        if not port_free(settings.bind, port):  # the same check serve makes, but before detaching
            return fail(str(PreflightError(f"port {port} on {settings.bind} is already in use; set {var}")))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log = log_path(settings)
    with open(log, "ab") as out:
        proc = subprocess.Popen(_serve_command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://localhost:{settings.api_port}"
    say(f"starting the emulator (pid {proc.pid}, log {log}) ...")
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
            return fail(f"the emulator exited with {proc.returncode}: {last[0]} (log: {log})")
        if answers(url, 1.0) and not port_free(settings.bind, settings.proxy_port):
            say(f"emulator answering: lifecycle API {url}, sandbox proxy http://localhost:{settings.proxy_port}")
            say(f"point the SDK at it: export TENSORLAKE_API_URL={url}")
            return 0
        time.sleep(0.2)
    return fail(f"the emulator did not answer within {args.timeout:g} s (pid {proc.pid}, log: {log})")


def stop(args: argparse.Namespace) -> int:
    """SIGTERM the emulator that holds TLE_DATA_DIR's lock (it terminates its sandboxes when so configured)."""
    settings = Settings.from_env()
    running = datalock.owner(settings.data_dir)
    if running is None or not running.pid:
        say(f"no emulator serves {settings.data_dir}")
        return 0
    say(f"stopping the emulator (pid {running.pid}, {running.api_url}) ...")
    try:
        os.kill(running.pid, signal.SIGTERM)
    except ProcessLookupError:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if datalock.owner(settings.data_dir) is None:
            say("stopped")
            return 0
        time.sleep(0.2)
    return fail(f"the emulator (pid {running.pid}) did not stop within {args.timeout:g} s; "
                f"`kill -9 {running.pid}` ends it")


def logs(args: argparse.Namespace) -> int:
    """Print the last --lines lines of TLE_DATA_DIR's emulator log; with --follow, keep printing."""
    path = log_path(Settings.from_env())
    if not path.exists():
        return fail(f"no log at {path}: no emulator was started for this data folder with `tensorlake-emulator start`")
    with open(path, errors="replace") as f:
        lines = f.readlines()
        sys.stdout.writelines(lines[-args.lines:] if args.lines else lines)
        sys.stdout.flush()
        while args.follow:  # like `tail -f`: poll for what the emulator appends
            line = f.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.2)
    return 0

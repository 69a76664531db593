"""tensorlake-emulator: serve the emulator, set the host up, inspect and clean up."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emulator.config import Settings, client_auth_headers, env_help

SETUP_SCRIPT = Path(__file__).resolve().parent / "setup" / "host-setup.sh"
SNAPSHOT_REPO = "tensorlake-emulator/snapshot"
CLIENT_ENV_HELP = """client-side variables (status, list, cleanup and the pytest plugin):
  TLE_EMULATOR_URL  the emulator to talk to [default: http://localhost:<TLE_API_PORT>]
  TLE_SESSIONS_DIR  where pytest sessions keep their records [default: ~/.local/state/tensorlake-emulator/sessions]
  INDEXIFY_NAMESPACE  the namespace `list` shows [default: default]"""


def _say(msg: str) -> None:
    print(msg, flush=True)


# ---- setup / serve ----------------------------------------------------------------------------------


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


# ---- helpers for the inspecting commands ----------------------------------------------------------


def _emulator_url(args: argparse.Namespace) -> str:
    if getattr(args, "url", None):
        return args.url.rstrip("/")
    if os.environ.get("TLE_EMULATOR_URL"):
        return os.environ["TLE_EMULATOR_URL"].rstrip("/")
    return f"http://localhost:{Settings.from_env().api_port}"


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=client_auth_headers()), timeout=timeout) as r:
        return json.load(r)


def _instance(settings: Settings, data_dir: str | None) -> tuple[str, Path]:
    from emulator.server import instance_label

    path = Path(data_dir) if data_dir else settings.data_dir
    return instance_label(path), path


def _fmt_ms(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


# ---- status -------------------------------------------------------------------------------------------


def _criu_line() -> tuple[bool, str]:
    # CRIU has no Docker API: shell out to it, as the emulator's own start-up probe does.
    exe = shutil.which("criu")
    if exe is None:
        return False, "not installed (run `tensorlake-emulator setup`); suspend and checkpoints are unavailable"
    try:
        ver = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
        version = next((ln.split()[1] for ln in ver.splitlines() if ln.startswith("Version:")), "?")
        check = subprocess.run([exe, "check"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{exe} does not run: {exc}"
    text = (check.stdout + check.stderr).strip()
    if "Looks good" in text:
        return True, f"{version} at {exe}; criu check: looks good"
    return False, f"{version} at {exe}; criu check FAILS: {text.splitlines()[-1] if text else '?'}"


async def _docker_status(settings: Settings, instance: str, say: Callable[[str], None]) -> bool:
    import aiodocker
    from aiodocker.exceptions import DockerError

    from emulator.backend.base import LABEL_INSTANCE, LABEL_POOL, LABEL_SESSION

    docker = aiodocker.Docker(url=settings.docker_host)
    try:
        try:
            info = await docker.system.info()
            version = await docker.version()
        except (DockerError, OSError) as exc:
            say(f"docker engine    NOT REACHABLE at {settings.docker_host}: {exc}")
            return False
        say(f"docker engine    {version.get('Version', '?')} at {settings.docker_host}; "
            f"experimental (checkpoint API): {'yes' if info.get('ExperimentalBuild') else 'no'}; "
            f"runtimes: {', '.join(sorted((info.get('Runtimes') or {}).keys()))}; "
            f"root: {info.get('DockerRootDir', '?')}")
        try:
            img = await docker.images.inspect(settings.default_image)
            say(f"default image    {settings.default_image} present ({img.get('Size', 0) // (1024 * 1024)} MB)")
        except DockerError:
            say(f"default image    {settings.default_image} MISSING (run `tensorlake-emulator setup`)")
        snaps = await docker.images.list(filters={"reference": [SNAPSHOT_REPO]})
        say(f"snapshot images  {len(snaps)} ({SNAPSHOT_REPO}:*)")
        containers = await docker.containers.list(all=True, filters={"label": [LABEL_INSTANCE]})
        by_instance: dict[str, list[str]] = {}
        for c in containers:
            labels = c._container.get("Labels") or {}
            by_instance.setdefault(labels.get(LABEL_INSTANCE, "?"), []).append(c._container.get("State", "?"))
        running = sum(s.count("running") for s in by_instance.values())
        say(f"sandboxes        {running} running, {len(containers) - running} other, "
            f"in {len(by_instance)} emulator instance(s)")
        for inst, states in sorted(by_instance.items()):
            mine = " (this data dir)" if inst == instance else ""
            say(f"  instance {inst}{mine}: {states.count('running')} running, "
                f"{len(states) - states.count('running')} other")
        pooled = [c for c in containers if (c._container.get("Labels") or {}).get(LABEL_POOL)]
        if pooled:
            say(f"  of which pool containers (warm or claimed): {len(pooled)}")
        sessions: set[str] = {label for c in containers
                              if (label := (c._container.get("Labels") or {}).get(LABEL_SESSION))}
        if sessions:
            say(f"  test sessions with sandboxes: {', '.join(sorted(sessions))}")
    finally:
        await docker.close()
    return True


def _status(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    instance, data_dir = _instance(settings, args.data_dir)
    _say(f"tensorlake-emulator status (data dir {data_dir}, instance {instance})")
    _say("checking the Docker engine ...")
    engine_ok = asyncio.run(_docker_status(settings, instance, _say))
    _say("checking CRIU (criu check can take a few seconds) ...")
    _criu_ok, criu_text = _criu_line()
    _say(f"criu             {criu_text}")
    url = _emulator_url(args)
    try:
        _get_json(f"{url}/healthz", 3)
        caps = _get_json(f"{url}/emulator/capabilities", 5)
        cp = caps.get("checkpoints") or {}
        _say(f"emulator         answering at {url}: runtime {caps.get('runtime')}, proxy {caps.get('proxy_url')}, "
             f"memory checkpoints {'available' if cp.get('criu') else 'UNAVAILABLE'} ({cp.get('criu_detail')})")
    except (OSError, ValueError) as exc:
        _say(f"emulator         nothing answers at {url} ({getattr(exc, 'reason', exc)}); "
             "start one with `tensorlake-emulator serve`")
    from sdk_shim.sessions import list_records, sessions_dir

    records = list_records()
    live = sum(1 for _, _, alive in records if alive)
    _say(f"pytest sessions  {live} live, {len(records) - live} dead (records in {sessions_dir()}); "
         "`tensorlake-emulator cleanup --stale` reaps the dead")
    return 0 if engine_ok else 1


# ---- list ---------------------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    url = _emulator_url(args)
    namespaces = args.namespace or [os.environ.get("INDEXIFY_NAMESPACE") or "default"]
    out: dict[str, Any] = {}
    try:
        for ns in namespaces:
            sandboxes = _get_json(f"{url}/v1/namespaces/{ns}/sandboxes")["sandboxes"]
            snapshots = _get_json(f"{url}/v1/namespaces/{ns}/snapshots")["snapshots"]
            pools = [_get_json(f"{url}/v1/namespaces/{ns}/sandbox-pools/{p['id']}")
                     for p in _get_json(f"{url}/v1/namespaces/{ns}/sandbox-pools")["pools"]]
            if not args.all:
                sandboxes = [s for s in sandboxes if s.get("status") != "terminated"]
            out[ns] = {"sandboxes": sandboxes, "snapshots": snapshots, "pools": pools}
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot list from the emulator at {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for ns, data in out.items():
        sbx = data["sandboxes"]
        print(f"namespace {ns}: {len(sbx)} sandbox(es){'' if args.all else ' (not terminated; --all for all)'}")
        if sbx:
            rows = [[s["id"], s.get("name") or "-", s["status"], s.get("image") or "-",
                     f"{s['resources']['cpus']:g}", str(s["resources"]["memory_mb"]), _fmt_ms(s.get("created_at"))]
                    for s in sbx]
            print(_table(rows, ["ID", "NAME", "STATUS", "IMAGE", "CPUS", "MEM_MB", "CREATED"]))
        snaps = data["snapshots"]
        print(f"namespace {ns}: {len(snaps)} snapshot(s)")
        if snaps:
            rows = [[s["id"], s["sandbox_id"], s["status"], s.get("snapshot_type") or "-",
                     str(s.get("size_bytes") or "-"), _fmt_ms(s.get("created_at"))] for s in snaps]
            print(_table(rows, ["ID", "SANDBOX", "STATUS", "TYPE", "SIZE_BYTES", "CREATED"]))
        pools = data["pools"]
        print(f"namespace {ns}: {len(pools)} pool(s)")
        if pools:
            rows = [[p["id"], p["image"], str(p.get("warm_containers") or 0), str(p.get("max_containers") or "-"),
                     str(sum(c["sandbox_id"] is None for c in p.get("containers") or [])),
                     str(sum(c["sandbox_id"] is not None for c in p.get("containers") or [])),
                     _fmt_ms(p.get("created_at"))] for p in pools]
            print(_table(rows, ["ID", "IMAGE", "WARM", "MAX", "IDLE", "CLAIMED", "CREATED"]))
    return 0


# ---- cleanup ------------------------------------------------------------------------------------------


def _cleanup(args: argparse.Namespace) -> int:
    from sdk_shim import docker_sweep
    from sdk_shim.sessions import reap_dead_sessions

    settings = Settings.from_env()
    if args.stale:
        _say("reaping the records of dead pytest sessions ...")
        labels = reap_dead_sessions(progress=_say)
        _say(f"reaped {len(labels)} dead session(s)")
        if not args.session and not args.instance_only:
            return 0
    if args.session:
        key, value = docker_sweep.session_selector(args.session)
        what = f"session {args.session}"
    else:
        instance, data_dir = _instance(settings, args.data_dir)
        key, value = docker_sweep.instance_selector(instance)
        what = f"instance {instance} (data dir {data_dir})"
    _say(f"looking for containers and snapshot images of {what} ...")
    try:
        found = docker_sweep.find_sync(key, value, settings.docker_host)
    except Exception as exc:
        print(f"error: Docker is not reachable at {settings.docker_host}: {exc}", file=sys.stderr)
        return 1
    _say(f"found {len(found.containers)} container(s) and {len(found.images)} image(s)")
    if args.dry_run:
        for c in found.containers:
            _say(f"  would remove container {c['name']} ({c['state']})")
        for i in found.images:
            _say(f"  would remove image {', '.join(i['tags'] or [i['id']])}")
        return 0
    if not args.session:
        url = _emulator_url(args)
        try:
            _get_json(f"{url}/healthz", 2)
            _say(f"note: an emulator answers at {url}; if it owns these sandboxes, its records are reconciled "
                 "on its next start (stop it first for a clean state)")
        except (OSError, ValueError):
            pass
    n_c, n_i = docker_sweep.run_sync(lambda: docker_sweep.remove(found, settings.docker_host, _say))
    _say(f"removed {n_c} container(s) and {n_i} image(s)")
    return 0


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
    sub.add_parser("setup", help="install and start what the host lacks (Docker, CRIU, image, venv)")

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
                                   "one test session. Nothing without the label is touched.",
                       epilog=CLIENT_ENV_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--session", metavar="LABEL", help="only what the test session LABEL made")
    p.add_argument("--data-dir", help="the data dir whose instance to clean [default: TLE_DATA_DIR]")
    p.add_argument("--stale", action="store_true",
                   help="reap dead pytest sessions (stop their emulators, remove their sandboxes, snapshots and "
                        "data dirs); alone, does only that")
    p.add_argument("--instance", dest="instance_only", action="store_true",
                   help="with --stale: also clean this data dir's instance")
    p.add_argument("--url", help="the emulator's lifecycle API, to warn when it is running")
    p.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command in (None, "serve"):
        if args.command is None:
            args.setup = False
        sys.exit(_serve(args))
    commands = {"setup": lambda _a: _setup(), "status": _status, "list": _list, "cleanup": _cleanup}
    if args.command in commands:
        sys.exit(commands[args.command](args))
    sys.exit(f"unknown command {args.command}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

"""`status` and `list`: what the host has and what a running emulator holds (read-only)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from docker.errors import APIError, ImageNotFound

from emulator import datalock
from emulator.cli.common import answers, emulator_url, fail, get_json, http_reason, instance_of, say
from emulator.config import Settings
from emulator.labels import LABEL_INSTANCE, LABEL_SESSION, SNAPSHOT_REPO
from sdk_shim import docker_sweep


def _fmt_ms(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _table(rows: list[list[str]], header: list[str]) -> str:
    # Kept by hand: a dozen lines, where a table library (tabulate, rich) would be a new dependency.
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def criu_line() -> tuple[bool, str]:
    """(usable, one-line description) of the host's CRIU."""
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


def _docker_status(settings: Settings, instance: str) -> bool:
    try:
        docker = docker_sweep.client(settings.docker_host)
    except docker_sweep.DockerUnreachable as exc:
        say(f"docker engine    NOT REACHABLE: {exc}")
        return False
    try:
        info, version = docker.info(), docker.version()
        say(f"docker engine    {version.get('Version', '?')} at {settings.docker_host}; "
            f"experimental (checkpoint API): {'yes' if info.get('ExperimentalBuild') else 'no'}; "
            f"runtimes: {', '.join(sorted((info.get('Runtimes') or {}).keys()))}; "
            f"root: {info.get('DockerRootDir', '?')}")
        try:
            img = docker.api.inspect_image(settings.default_image)
            say(f"default image    {settings.default_image} present ({img.get('Size', 0) // (1024 * 1024)} MB)")
        except ImageNotFound:
            say(f"default image    {settings.default_image} MISSING (run `tensorlake-emulator setup`)")
        snaps = docker.api.images(name=SNAPSHOT_REPO)
        say(f"snapshot images  {len(snaps)} ({SNAPSHOT_REPO}:*)")
        containers = [c.attrs for c in docker.containers.list(all=True, sparse=True,
                                                              filters={"label": [LABEL_INSTANCE]})]
    except APIError as exc:
        say(f"docker engine    error: {exc.explanation or exc}")
        return False
    finally:
        docker.close()
    by_instance: dict[str, list[str]] = {}
    for c in containers:
        by_instance.setdefault((c.get("Labels") or {}).get(LABEL_INSTANCE, "?"), []).append(c.get("State", "?"))
    running = sum(s.count("running") for s in by_instance.values())
    say(f"sandboxes        {running} running, {len(containers) - running} other, "
        f"in {len(by_instance)} emulator instance(s)")
    for inst, states in sorted(by_instance.items()):
        mine = " (this data dir)" if inst == instance else ""
        say(f"  instance {inst}{mine}: {states.count('running')} running, "
            f"{len(states) - states.count('running')} other")
    sessions = {label for c in containers if (label := (c.get("Labels") or {}).get(LABEL_SESSION))}
    if sessions:
        say(f"  test sessions with sandboxes: {', '.join(sorted(sessions))}")
    return True


def status(args: argparse.Namespace) -> int:
    """Print the host's readiness and what the emulator holds; exit 1 when Docker does not answer."""
    settings = Settings.from_env()
    instance, data_dir = instance_of(settings, args.data_dir)
    say(f"tensorlake-emulator status (data dir {data_dir}, instance {instance})")
    say("checking the Docker engine ...")
    engine_ok = _docker_status(settings, instance)
    say("checking CRIU (criu check can take a few seconds) ...")
    say(f"criu             {criu_line()[1]}")
    owner = datalock.owner(data_dir)
    served = f"served by pid {owner.pid} at {owner.api_url}" if owner else "not in use"
    say(f"this data dir    {served}; log {data_dir / 'emulator.log'}")
    say(f"on disk          {_disk_usage(data_dir)}")
    url = emulator_url(args)
    try:
        if not answers(url, 3):
            raise httpx.ConnectError("no answer to /healthz")
        caps = get_json(f"{url}/emulator/capabilities", 5)
        cp = caps.get("checkpoints") or {}
        say(f"emulator         answering at {url}: runtime {caps.get('runtime')}, proxy {caps.get('proxy_url')}, "
            f"memory checkpoints {'available' if cp.get('criu') else 'UNAVAILABLE'} ({cp.get('criu_detail')})")
    except (httpx.HTTPError, ValueError) as exc:
        say(f"emulator         nothing answers at {url} ({http_reason(exc)}); "
            "start one with `tensorlake-emulator start` (background) or `serve` (foreground)")
    from sdk_shim.sessions import list_records, sessions_dir

    records = list_records()
    live = sum(1 for _, _, alive in records if alive)
    say(f"pytest sessions  {live} live, {len(records) - live} dead (records in {sessions_dir()}); "
        "`tensorlake-emulator cleanup --stale` reaps the dead")
    return 0 if engine_ok else 1


def _folder_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):  # never follows links: a sandbox's run folder may hold them
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _disk_usage(data_dir: Path) -> str:
    """What the emulator holds in its data folder, by part: state database, snapshots (CRIU dumps of
    checkpoints), suspend dumps, sandbox run folders; and containerd's copies of its restores in /tmp."""
    from emulator.checkpoints.containerd_leftovers import CONTAINERD_TMP, NONCE_FILE, PREFIX

    parts = {"state": sum(p.stat().st_size for p in data_dir.glob("state.sqlite3*") if p.is_file()),
             "snapshots": _folder_bytes(data_dir / "snapshots"), "suspend dumps": _folder_bytes(data_dir / "dumps"),
             "run folders": _folder_bytes(data_dir / "run")}
    copies = [p for p in CONTAINERD_TMP.glob(f"{PREFIX}*") if (p / NONCE_FILE).is_file()]
    mib = {k: f"{v / 2**20:.1f} MiB" for k, v in parts.items()}
    return (", ".join(f"{k} {v}" for k, v in mib.items())
            + f"; containerd restore copies in {CONTAINERD_TMP}: {len(copies)}")


def _print_namespace(ns: str, data: dict[str, Any], all_: bool) -> None:
    sbx = data["sandboxes"]
    print(f"namespace {ns}: {len(sbx)} sandbox(es){'' if all_ else ' (not terminated; --all for all)'}")
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
    pools = data.get("pools") or []
    print(f"namespace {ns}: {len(pools)} pool(s)")
    if pools:
        rows = [[p["id"], p["image"], str(p.get("warm_containers") or 0), str(p.get("max_containers") or "-"),
                 str(sum(c.get("sandbox_id") is None for c in p.get("containers") or [])),
                 str(sum(c.get("sandbox_id") is not None for c in p.get("containers") or [])),
                 _fmt_ms(p.get("created_at"))] for p in pools]
        print(_table(rows, ["ID", "IMAGE", "WARM", "MAX", "IDLE", "CLAIMED", "CREATED"]))


def list_(args: argparse.Namespace) -> int:
    """Print (or --json) the sandboxes, snapshots and pools of a running emulator, per namespace."""
    import os

    url = emulator_url(args)
    namespaces = args.namespace or [os.environ.get("INDEXIFY_NAMESPACE") or "default"]
    out: dict[str, Any] = {}
    try:
        for ns in namespaces:
            sandboxes = get_json(f"{url}/v1/namespaces/{ns}/sandboxes")["sandboxes"]
            snapshots = get_json(f"{url}/v1/namespaces/{ns}/snapshots")["snapshots"]
            pools = [get_json(f"{url}/v1/namespaces/{ns}/sandbox-pools/{p['id']}")
                     for p in get_json(f"{url}/v1/namespaces/{ns}/sandbox-pools")["pools"]]
            if not args.all:
                sandboxes = [s for s in sandboxes if s.get("status") != "terminated"]
            out[ns] = {"sandboxes": sandboxes, "snapshots": snapshots, "pools": pools}
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return fail(f"cannot list from the emulator at {url}: {http_reason(exc)}")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for ns, data in out.items():
        _print_namespace(ns, data, args.all)
    return 0

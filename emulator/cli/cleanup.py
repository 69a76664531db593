"""`cleanup`: remove what emulators made, by label, without lying to a running emulator.

Rules (issue 16):
- `--dry-run` changes nothing, whatever else is given: it prints the plan and stops.
- What a running emulator owns (its data folder's lock is held, see emulator/datalock.py) is deleted
  through that emulator's API, so its records stay true; when it does not answer, the cleanup refuses.
- A live test session's resources belong to that session: touching them needs --force.
- The plan (and every warning) is printed before anything is deleted.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from emulator import datalock
from emulator.cli.common import answers, fail, instance_of, say
from emulator.config import Settings, client_auth_headers
from emulator.labels import LABEL_INSTANCE, LABEL_NAMESPACE, LABEL_SANDBOX
from sdk_shim import docker_sweep
from sdk_shim.docker_sweep import Found


@dataclass
class Group:
    """What one emulator instance made among the found items, and who (if anyone) owns it now."""

    instance: str
    found: Found = field(default_factory=Found)
    owner: datalock.Owner | None = None


def _group(found: Found, this_instance: str, this_dir: Path) -> list[Group]:
    groups: dict[str, Group] = {}
    for kind in ("containers", "images"):
        for item in getattr(found, kind):
            inst = item["labels"].get(LABEL_INSTANCE, "?")
            getattr(groups.setdefault(inst, Group(inst)).found, kind).append(item)
    for g in groups.values():
        g.owner = datalock.owner(this_dir) if g.instance == this_instance else datalock.owner_of_instance(g.instance)
    return list(groups.values())


def _print_plan(groups: list[Group], verb: str) -> None:
    for g in groups:
        how = f"through the running emulator at {g.owner.api_url} (pid {g.owner.pid})" if g.owner else "directly"
        say(f"instance {g.instance}: {verb} {len(g.found.containers)} container(s), {len(g.found.images)} image(s) "
            f"{how}")
        for c in g.found.containers:
            say(f"  {verb} container {c['name']} ({c['state']}, sandbox {c['labels'].get(LABEL_SANDBOX, '?')})")
        for i in g.found.images:
            say(f"  {verb} image {', '.join(i['tags'] or [i['id']])}")


def _through_api(g: Group) -> tuple[int, int]:
    """Delete the group's snapshots, then terminate its sandboxes, through the owner's lifecycle API."""
    assert g.owner and g.owner.api_url
    base = g.owner.api_url.rstrip("/")
    items = g.found.containers + g.found.images
    sandboxes = {(i["labels"].get(LABEL_NAMESPACE) or "default", i["labels"][LABEL_SANDBOX])
                 for i in items if i["labels"].get(LABEL_SANDBOX)}
    ids = {sid for _, sid in sandboxes}
    n_snap = n_sbx = 0
    with httpx.Client(base_url=base, timeout=120, headers=client_auth_headers()) as http:
        for ns in sorted({ns for ns, _ in sandboxes}):
            for snap in http.get(f"/v1/namespaces/{ns}/snapshots").raise_for_status().json()["snapshots"]:
                if snap.get("sandbox_id") in ids:
                    say(f"deleting snapshot {snap['id']} through the emulator")
                    r = http.delete(f"/v1/namespaces/{ns}/snapshots/{snap['id']}")
                    n_snap += r.status_code < 300
        for ns, sid in sorted(sandboxes):
            say(f"terminating sandbox {sid} through the emulator")
            r = http.delete(f"/v1/namespaces/{ns}/sandboxes/{sid}")
            n_sbx += r.status_code < 300
    return n_sbx, n_snap


def _session_alive(label: str) -> bool:
    from sdk_shim.sessions import list_records

    return any(alive for rec, _, alive in list_records() if rec is not None and rec.label == label)


def _reap_stale(args: argparse.Namespace) -> None:
    from sdk_shim.sessions import list_records, reap_dead_sessions

    if args.dry_run:
        dead = [(rec, path) for rec, path, alive in list_records() if not alive]
        for rec, path in dead:
            say(f"would reap dead session {rec.label if rec else path.name} "
                f"(pid {rec.pid if rec else '?'}, data dir {rec.data_dir if rec else '?'})")
        say(f"would reap {len(dead)} dead session(s)")
        return
    say("reaping the records of dead pytest sessions ...")
    labels = reap_dead_sessions(progress=say)
    say(f"reaped {len(labels)} dead session(s)")


def cleanup(args: argparse.Namespace) -> int:
    """Remove containers and snapshot images by label (see the module's rules). Exit 1 on refusal or error."""
    settings = Settings.from_env()
    if args.stale:
        _reap_stale(args)
        if not args.session and not args.instance_only:
            return 0
    instance, data_dir = instance_of(settings, args.data_dir)
    if args.session:
        if _session_alive(args.session) and not args.force:
            return fail(f"test session {args.session} is still running and cleans up after itself; "
                        "add --force to remove its sandboxes anyway")
        key, value, what = *docker_sweep.session_selector(args.session), f"session {args.session}"
    else:
        key, value = docker_sweep.instance_selector(instance)
        what = f"instance {instance} (data dir {data_dir})"
    say(f"looking for containers and snapshot images of {what} ...")
    try:
        groups = _group(docker_sweep.find(key, value, settings.docker_host), instance, data_dir)
    except docker_sweep.DockerUnreachable as exc:
        return fail(str(exc))
    for g in groups:
        if g.owner and not (g.owner.api_url and answers(g.owner.api_url)):
            return fail(f"the emulator that owns instance {g.instance} (pid {g.owner.pid}) holds its data folder "
                        f"but does not answer at {g.owner.api_url}; stop it first, then run cleanup again")
    if not groups:
        say("nothing to remove")
        return 0
    _print_plan(groups, "would remove" if args.dry_run else "will remove")
    if args.dry_run:
        return 0
    n_c = n_i = 0
    for g in groups:
        if g.owner:
            c, i = _through_api(g)
        else:
            c, i = docker_sweep.remove(g.found, settings.docker_host, say)
        n_c, n_i = n_c + c, n_i + i
    say(f"removed {n_c} container(s) and {n_i} image(s)")
    return 0

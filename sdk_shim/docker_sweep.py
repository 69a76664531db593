"""Find and remove what an emulator created, by its Docker labels, and nothing else (synchronous, docker-py).

The label rules are emulator/labels.py's, the same ones the server's backend writes: a sweep selects by
exactly one non-empty label, so it can never touch a container or an image the emulator did not make.

The CLI (`tensorlake-emulator cleanup`, `status`) and the pytest plugin's reaper use this module. They
are synchronous callers, some of them inside a running event loop (an async test session): docker-py
is the Engine API's synchronous client, so no private loop or thread is needed. The server keeps
aiodocker on its own event loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from docker.client import DockerClient
from docker.errors import APIError, DockerException, NotFound

from emulator.labels import LABEL_INSTANCE, LABEL_NAMESPACE, LABEL_SANDBOX, LABEL_SESSION, label_filter, session_filter

Progress = Callable[[str], None]
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# Removing a running container waits for it to stop; a sandbox under memory pressure can take a while.
DOCKER_TIMEOUT_S = 120


class DockerUnreachable(RuntimeError):
    """The Docker engine does not answer at the configured host (one line, with the host in it)."""


def docker_host() -> str:
    return os.environ.get("TLE_DOCKER_HOST") or DEFAULT_DOCKER_HOST


def client(host: str | None = None, timeout: int = DOCKER_TIMEOUT_S) -> DockerClient:
    """A docker-py client for host (default TLE_DOCKER_HOST or the local socket), checked with a ping.

    Raises DockerUnreachable when the engine does not answer, so callers can print one line.
    """
    url = host or docker_host()
    try:
        c = DockerClient(base_url=url, timeout=timeout)
        c.ping()
    except DockerException as exc:
        raise DockerUnreachable(f"Docker is not reachable at {url} ({_short(exc)}); is the engine running? "
                                "`tensorlake-emulator setup` starts it") from exc
    return c


def _short(exc: BaseException) -> str:
    """The root cause in a few words: docker-py wraps the socket's OSError in two layers of requests errors."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        for arg in getattr(seen, "args", ()):
            if isinstance(arg, OSError) and arg.strerror:
                return arg.strerror
            nested = getattr(arg, "args", ())
            if any(isinstance(a, OSError) and a.strerror for a in nested):
                return next(a.strerror for a in nested if isinstance(a, OSError) and a.strerror)
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip().splitlines()
    return text[-1][:200] if text else type(exc).__name__


@dataclass
class Found:
    """Containers and images that carry one label."""

    containers: list[dict[str, Any]] = field(default_factory=list)  # id, name, state, labels
    images: list[dict[str, Any]] = field(default_factory=list)  # id, tags, labels

    @property
    def sandbox_ids(self) -> set[str]:
        items = self.containers + self.images
        return {i["labels"][LABEL_SANDBOX] for i in items if i["labels"].get(LABEL_SANDBOX)}

    @property
    def namespaces(self) -> set[str]:
        items = self.containers + self.images
        return {i["labels"][LABEL_NAMESPACE] for i in items if i["labels"].get(LABEL_NAMESPACE)}

    def __bool__(self) -> bool:
        return bool(self.containers or self.images)


def session_selector(label: str) -> tuple[str, str]:
    return LABEL_SESSION, label


def instance_selector(instance: str) -> tuple[str, str]:
    return LABEL_INSTANCE, instance


def find(key: str, value: str, host: str | None = None) -> Found:
    """Every container (any state) and image labelled key=value. Raises ValueError for an empty value,
    DockerUnreachable when the engine does not answer."""
    filters = label_filter(key, value)
    c = client(host)
    try:
        # sparse: the list's own fields; no per-container inspect that races a concurrent removal.
        containers = c.containers.list(all=True, sparse=True, filters=filters)
        images = c.api.images(filters=filters)
    finally:
        c.close()
    found = Found()
    for ctr in containers:
        raw = ctr.attrs
        found.containers.append({
            "id": ctr.id, "name": (raw.get("Names") or ["?"])[0].lstrip("/"), "state": raw.get("State", "?"),
            "labels": raw.get("Labels") or {},
        })
    for img in images:
        found.images.append({"id": img["Id"], "tags": [t for t in img.get("RepoTags") or [] if t != "<none>:<none>"],
                             "labels": img.get("Labels") or {}})
    return found


def remove(found: Found, host: str | None = None, progress: Progress | None = None) -> tuple[int, int]:
    """Remove the containers first (an image in use cannot go), then the images. Returns the counts removed.

    What is already gone counts as done; any other refusal is reported through progress and skipped.
    """
    say = progress or (lambda _msg: None)
    if not found:
        return 0, 0
    c = client(host)
    n_containers = n_images = 0
    try:
        for ctr in found.containers:
            say(f"removing container {ctr['name']} ({ctr['state']}, sandbox {ctr['labels'].get(LABEL_SANDBOX, '?')})")
            try:
                c.api.remove_container(ctr["id"], force=True, v=True)
                n_containers += 1
            except NotFound:
                pass
            except APIError as exc:
                say(f"  could not remove {ctr['name']}: {exc.explanation or exc}")
        for img in found.images:
            # Delete by tag first, then by id: an image tagged twice would otherwise refuse a plain id delete.
            refs = img["tags"] or [img["id"]]
            say(f"removing snapshot image {', '.join(refs)}")
            try:
                for ref in refs:
                    c.api.remove_image(ref, force=True)
                n_images += 1
            except NotFound:
                pass
            except APIError as exc:
                say(f"  could not remove {refs[0]}: {exc.explanation or exc}")
    finally:
        c.close()
    return n_containers, n_images


def sweep(key: str, value: str, host: str | None = None, progress: Progress | None = None) -> tuple[int, int]:
    """find() then remove(): everything labelled key=value goes. Returns (containers, images) removed."""
    return remove(find(key, value, host), host, progress)


def session_leftovers(label: str, host: str | None = None) -> tuple[list[str], list[str]]:
    """Ids of the containers and images that still carry the session label (for status and tests)."""
    c = client(host)
    try:
        filters = session_filter(label)
        return ([ctr.id for ctr in c.containers.list(all=True, sparse=True, filters=filters)],
                [img["Id"] for img in c.api.images(filters=filters)])
    finally:
        c.close()

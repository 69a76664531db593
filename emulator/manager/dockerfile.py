"""Dockerfile rewriting for local builds: base-image resolution, RUN heredocs and the emulator's labels.

The engine's classic builder (the one its HTTP API runs without a BuildKit session) is what builds
here. Three things are rewritten before it sees the text:

- `FROM <ref>`: no registry is reachable, so a base must already be a local image. A reference that
  is not (and is not an earlier stage's name) is mapped by `aliases` (fnmatch patterns to a local
  image, e.g. `python:*` to the default image, which has Python) or reported as missing.
- `RUN <<EOF` / `RUN cmd <<EOF` heredocs (BuildKit syntax the classic builder rejects) become the
  exec form `RUN ["/bin/sh", "-c", "<the same shell text with its heredoc>"]`, which is what BuildKit
  runs for them.
- A `LABEL` after every `FROM` puts the emulator's labels on every layer the build commits, so even
  the cached steps of a failed build are found (and removed) by label.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

_HEREDOC = re.compile(r"<<(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_FROM = re.compile(r"^(\s*FROM\s+)((?:--\S+\s+)*)(\S+)(.*)$", re.IGNORECASE)
_AS = re.compile(r"^\s+AS\s+(\S+)", re.IGNORECASE)


@dataclass
class Rewritten:
    """The text to build, the base references it resolved (original -> local), and notes for the log."""

    text: str
    bases: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class MissingBaseImage(Exception):
    """A FROM names an image that is neither local nor aliased (message names it and what to do)."""


def _logical_lines(text: str) -> list[str]:
    """Physical lines with backslash continuations joined (heredoc bodies are taken raw later)."""
    return text.split("\n")


def _heredoc_run(first: str, lines: list[str], i: int) -> tuple[str, int] | None:
    """If `first` is a RUN with heredocs, the exec-form RUN and the index after its bodies; else None."""
    m = re.match(r"^(\s*RUN\s+)(.*)$", first, re.IGNORECASE)
    if not m or not _HEREDOC.search(m.group(2)):
        return None
    command = m.group(2)
    bodies: list[tuple[str, bool, list[str]]] = []
    for hd in _HEREDOC.finditer(command):
        bodies.append((hd.group(3), hd.group(1) == "-", []))
    j = i + 1
    for tag, strip_tabs, body in bodies:
        while j < len(lines):
            line = lines[j]
            j += 1
            if (line.lstrip("\t") if strip_tabs else line) == tag:
                break
            body.append(line)
    only = _HEREDOC.fullmatch(command.strip())
    if only and len(bodies) == 1:
        # `RUN <<EOF` alone: BuildKit runs the body as a shell script
        script = "\n".join(bodies[0][2]) + "\n"
    else:
        parts = [command]
        for tag, _, body in bodies:
            parts.extend(body)
            parts.append(tag)
        script = "\n".join(parts) + "\n"
    return f"RUN {json.dumps(['/bin/sh', '-c', script])}", j


def rewrite(text: str, labels: dict[str, str], image_exists: Callable[[str], bool],
            aliases: dict[str, str]) -> Rewritten:
    """Rewrite a Dockerfile for the local classic builder (see the module docstring).

    `image_exists(ref)` says whether the engine has `ref`; `aliases` maps fnmatch patterns of
    references to local images, tried in order. Raises MissingBaseImage for a base neither has.
    """
    out = Rewritten(text="")
    lines = _logical_lines(text)
    stages: set[str] = set()
    label_line = "LABEL " + " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in sorted(labels.items()))
    result: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        heredoc = _heredoc_run(line, lines, i)
        if heredoc is not None:
            result.append(heredoc[0])
            i = heredoc[1]
            continue
        fm = _FROM.match(line)
        if fm:
            prefix, flags, ref, rest = fm.groups()
            local = _resolve(ref, stages, image_exists, aliases, out)
            result.append(f"{prefix}{flags}{local}{rest}")
            result.append(label_line)
            am = _AS.match(rest)
            if am:
                stages.add(am.group(1).lower())
        else:
            result.append(line)
        i += 1
    out.text = "\n".join(result) + "\n"
    return out


def _resolve(ref: str, stages: set[str], image_exists: Callable[[str], bool], aliases: dict[str, str],
             out: Rewritten) -> str:
    if ref.lower() in stages or "$" in ref or ref == "scratch" or image_exists(ref):
        return ref
    for pattern, local in aliases.items():
        if fnmatch.fnmatchcase(ref, pattern) and image_exists(local):
            out.bases[ref] = local
            out.notes.append(f"base image {ref} is not a local image (no registry is reachable); "
                             f"building FROM {local} instead (TLE_IMAGE_BASE_ALIASES)")
            return local
    raise MissingBaseImage(
        f"base image {ref!r} is not available locally and no registry is reachable from the emulator: "
        f"build or tag it locally first (docker build/tag), or map it to a local image with "
        f"TLE_IMAGE_BASE_ALIASES")


def parse_aliases(spec: str) -> dict[str, str]:
    """`pattern=image,pattern=image` (TLE_IMAGE_BASE_ALIASES) -> {pattern: image}, order kept."""
    result: dict[str, str] = {}
    for item in spec.split(","):
        if "=" in item:
            pattern, image = item.split("=", 1)
            if pattern.strip() and image.strip():
                result[pattern.strip()] = image.strip()
    return result

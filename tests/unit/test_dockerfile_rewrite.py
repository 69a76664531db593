"""emulator/manager/dockerfile.py: what the classic builder is given instead of the user's Dockerfile."""

from __future__ import annotations

import json

import pytest

from emulator.manager.dockerfile import MissingBaseImage, parse_aliases, rewrite

LOCAL = {"tensorlake/ubuntu-minimal", "tensorlake-emulator/sandbox:latest"}


def _exists(ref: str) -> bool:
    return ref in LOCAL


def test_labels_follow_every_from_and_stages_are_not_resolved() -> None:
    text = "FROM tensorlake/ubuntu-minimal AS build\nRUN true\nFROM build\nCOPY --from=build /a /b\n"
    out = rewrite(text, {"k": "v"}, _exists, {})
    lines = out.text.splitlines()
    assert lines[0] == "FROM tensorlake/ubuntu-minimal AS build" and lines[1] == 'LABEL "k"="v"'
    assert lines[3] == "FROM build" and lines[4] == 'LABEL "k"="v"'
    assert out.bases == {}


def test_missing_bases_map_by_alias_or_fail() -> None:
    aliases = parse_aliases("python=tensorlake-emulator/sandbox:latest,python:*=tensorlake-emulator/sandbox:latest")
    out = rewrite("FROM --platform=linux/amd64 python:3.12-slim\n", {}, _exists, aliases)
    assert out.text.startswith("FROM --platform=linux/amd64 tensorlake-emulator/sandbox:latest\n")
    assert out.bases == {"python:3.12-slim": "tensorlake-emulator/sandbox:latest"} and out.notes
    with pytest.raises(MissingBaseImage, match="no registry"):
        rewrite("FROM node:20\n", {}, _exists, aliases)


def test_run_heredocs_become_exec_form_shell_scripts() -> None:
    text = "FROM scratch\nRUN python - <<'PY'\nprint(1)\nPY\nRUN <<EOF\necho a\necho b\nEOF\nRUN echo after\n"
    lines = rewrite(text, {}, _exists, {}).text.splitlines()
    runs = [line for line in lines if line.startswith("RUN ")]
    assert json.loads(runs[0][4:]) == ["/bin/sh", "-c", "python - <<'PY'\nprint(1)\nPY\n"]
    assert json.loads(runs[1][4:]) == ["/bin/sh", "-c", "echo a\necho b\n"]
    assert runs[2] == "RUN echo after"

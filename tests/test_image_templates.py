"""The legacy sandbox-image flow (`cas=False` in SDK 0.5.163, the only flow of 0.5.113), with the real SDK.

The SDK prepares the build, runs the emulator's builder command in a builder sandbox it creates, and
completes the build: the image is then built on the host engine from the context it uploaded there.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from tensorlake.image import delete_sandbox_image, find_sandbox_image_by_name, list_sandbox_images
from tensorlake.image.sandbox_builder import SandboxImageBuildError, build_sandbox_image
from test_images import read_in_image

from emulator.manager.image_context import MEMORY_ADVICE
from sdk_shim.launcher import EmulatorProcess

BASE = "tensorlake/ubuntu-minimal"


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch, emulator: EmulatorProcess) -> None:
    monkeypatch.setenv("TENSORLAKE_API_KEY", "any-key-works")
    monkeypatch.setenv("TENSORLAKE_API_URL", emulator.api_url)


def test_legacy_build_with_context_runs_lists_and_deletes(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("legacy context\n")
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE}\nCOPY data.txt /srv/data.txt\n")
    name = f"tle-legacy-{uuid.uuid4().hex[:8]}"
    events: list[dict] = []
    result = build_sandbox_image(str(tmp_path / "Dockerfile"), registered_name=name, cas=False,
                                 emit=events.append)
    try:
        assert result["name"] == name and result["id"].startswith("image_")
        assert any("host engine" in str(e.get("message")) for e in events if e.get("type") == "build_log")
        found = find_sandbox_image_by_name(name)
        assert found is not None and found["id"] == result["id"]
        assert [i for i in list_sandbox_images() if i["name"] == name], "listed once, from the legacy catalog"
        assert read_in_image(name, "/srv/data.txt") == "legacy context"
    finally:
        delete_sandbox_image(name)
    assert find_sandbox_image_by_name(name) is None


def test_legacy_build_failure_carries_the_advice(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "FROM python:3.12-slim\nRUN python -c 'b = [bytearray(32 << 20) for _ in range(100)]'\n")
    name = f"tle-legacy-fail-{uuid.uuid4().hex[:8]}"
    with pytest.raises(SandboxImageBuildError) as info:
        build_sandbox_image(str(tmp_path / "Dockerfile"), registered_name=name, cas=False, memory_mb=256)
    assert MEMORY_ADVICE in str(info.value), str(info.value)
    assert find_sandbox_image_by_name(name) is None


def test_legacy_names_must_be_local_tags(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE}\n")
    with pytest.raises(SandboxImageBuildError, match="not usable as a local image tag"):
        build_sandbox_image(str(tmp_path / "Dockerfile"), registered_name="Upper Case", cas=False)

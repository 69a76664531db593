"""Errors that say what is wrong with an image (issue 13): another architecture, an entrypoint missing in
the image, an image that cannot run the agent, an image that is not there. Each is a 400 in the SDK's
error shape, never a 500 and never RUNTIME_NOT_AVAILABLE naming runc. Real images built offline
(tests/images_offline.py), the real SDK, a real emulator.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import warnings
from typing import Any

import pytest
from tensorlake.sandbox import Sandbox
from tensorlake.sandbox.exceptions import SandboxError

from sdk_shim.launcher import EmulatorProcess
from tests import images_offline

T = 60.0


def _post(api_url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"{api_url}/v1/namespaces/default/sandboxes", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=T) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _get(api_url: str, sid: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{api_url}/v1/namespaces/default/sandboxes/{sid}", timeout=T) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def _ended(api_url: str, sid: str, within: float = 30.0) -> dict[str, Any]:
    """The sandbox's record once its launch has ended (running or terminated)."""
    deadline = time.monotonic() + within
    while (info := _get(api_url, sid))["status"] == "pending":
        assert time.monotonic() < deadline, json.dumps(info)
        time.sleep(0.1)
    return info


@pytest.fixture(scope="module")
def images() -> images_offline.TestImage:
    try:
        return images_offline.busybox()
    except images_offline.ImageBuildError as exc:
        pytest.skip(f"offline test image not built: {exc}")


def test_foreign_architecture_is_refused_at_create(emulator: EmulatorProcess, images: Any) -> None:
    ref = images_offline.foreign_arch("arm64")
    status, body = _post(emulator.api_url, {"image": ref})
    assert status == 400 and body["code"] == "IMAGE_INCOMPATIBLE", body
    assert "linux/arm64" in body["error"] and "linux/amd64" in body["error"] and "--platform" in body["error"]
    with pytest.raises(SandboxError) as err:
        Sandbox.create(image=ref, request_timeout=T)
    assert "linux/arm64" in str(err.value)


def test_missing_image_says_no_registry(emulator: EmulatorProcess) -> None:
    status, body = _post(emulator.api_url, {"image": "tle-test/never-built:1"})
    assert status == 400 and body["code"] == "IMAGE_NOT_FOUND", body
    assert "no registry" in body["error"] and "docker images" in body["error"]


@pytest.mark.parametrize(("entrypoint", "fragment"), [
    (["/no/such/program", "--flag"], "'/no/such/program' does not exist"),
    (["no-such-command"], "'no-such-command' is in no folder of its PATH"),
])
def test_missing_entrypoint_is_named(emulator: EmulatorProcess, entrypoint: list[str], fragment: str) -> None:
    status, body = _post(emulator.api_url, {"entrypoint": entrypoint, "resources": {"memory_mb": 256}})
    assert status == 200, body
    info = _ended(emulator.api_url, body["sandbox_id"])
    assert info["status"] == "terminated", json.dumps(info)
    assert info["termination_reason"] == "ENTRYPOINT_NOT_FOUND" or "ENTRYPOINT_NOT_FOUND" in str(info), json.dumps(info)
    assert fragment in info["error_details"], json.dumps(info)
    with pytest.raises(SandboxError) as err:
        Sandbox.create(entrypoint=entrypoint, memory_mb=256, request_timeout=T, startup_timeout=30)
    assert fragment in str(err.value) or "ENTRYPOINT_NOT_FOUND" in str(err.value), str(err.value)


def test_entrypoint_found_on_the_image_path_still_starts(emulator: EmulatorProcess) -> None:
    with Sandbox.create(entrypoint=["sleep", "300"], memory_mb=256, request_timeout=T) as sb:
        assert sb.run("true", timeout=30).exit_code == 0


def test_image_that_cannot_run_the_agent(emulator: EmulatorProcess, images: Any) -> None:
    ref = images_offline.broken_layout()
    started = time.monotonic()
    status, body = _post(emulator.api_url, {"image": ref, "resources": {"memory_mb": 256}})
    assert status == 200, body
    info = _ended(emulator.api_url, body["sandbox_id"])
    assert info["status"] == "terminated" and time.monotonic() - started < 20, json.dumps(info)
    details = info["error_details"]
    assert "IMAGE_INCOMPATIBLE" in str(info) and "cannot run the sandbox agent" in details, json.dumps(info)
    assert "RUNTIME_NOT_AVAILABLE" not in str(info) and "/.tle" in info["error_details"], json.dumps(info)


def test_pool_of_a_foreign_image_is_refused(emulator: EmulatorProcess, images: Any) -> None:
    from tensorlake.sandbox import SandboxClient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pools live on the deprecated client only
        client = SandboxClient(api_url=emulator.api_url, request_timeout=T)
    try:
        with pytest.raises(SandboxError) as err:
            client.create_pool(image=images_offline.foreign_arch("arm64"), cpus=0.5, memory_mb=256)
        assert "linux/arm64" in str(err.value)
    finally:
        client.close()

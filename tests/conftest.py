"""Shared test set-up: one real emulator subprocess per test session (per xdist worker), on free ports.

The SDK reads its environment once at import, so TENSORLAKE_API_URL is set here, before any test
module imports tensorlake.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdk_shim.docker_sweep import session_selector, sweep
from sdk_shim.launcher import EmulatorProcess, free_port

_API_PORT, _PROXY_PORT = free_port(), free_port()
os.environ["TENSORLAKE_API_URL"] = f"http://localhost:{_API_PORT}"
os.environ.pop("TENSORLAKE_SANDBOX_API_URL", None)
if os.environ.get("TLE_TEST_PROXY_URL_ENV") == "1":
    # tests/sdk_range.py with a release older than 0.5.58: those do not route by the sandbox_url the
    # emulator answers, they take the proxy from this variable (or assume localhost:9443).
    os.environ["TENSORLAKE_SANDBOX_PROXY_URL"] = f"http://localhost:{_PROXY_PORT}"
os.environ.pop("TENSORLAKE_API_KEY", None)
os.environ.pop("INDEXIFY_NAMESPACE", None)
# Every emulator these tests start inherits this label, so whatever they leave in Docker (snapshot
# images of emulators whose data folder is gone, say) is swept by label when the session ends.
SESSION_LABEL = f"tests-{uuid.uuid4().hex[:12]}"
os.environ["TLE_SESSION_LABEL"] = SESSION_LABEL

# TLE_TEST_RUNTIME=runsc: the second pass of `./run test` (docs/gvisor.md). Every emulator these tests
# start inherits TLE_RUNTIME, so every sandbox runs under gVisor; without runsc in Docker the pass skips.
TEST_RUNTIME = os.environ.get("TLE_TEST_RUNTIME", "").strip() or None
if TEST_RUNTIME:
    os.environ["TLE_RUNTIME"] = TEST_RUNTIME


def _runtime_missing() -> str | None:
    """Why the runtime under test cannot run sandboxes here (None: it can)."""
    if TEST_RUNTIME in (None, "runc"):
        return None
    import subprocess
    out = subprocess.run(["docker", "info", "--format", "{{range $k, $v := .Runtimes}}{{$k}} {{end}}"],
                         capture_output=True, text=True, timeout=30)
    if TEST_RUNTIME not in out.stdout.split():
        return (f"TLE_TEST_RUNTIME={TEST_RUNTIME}: Docker has no runtime '{TEST_RUNTIME}' (`bash "
                "emulator/setup/gvisor-install.sh` registers gVisor; it says why when it cannot)")
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = _runtime_missing()
    for item in items:
        if why:
            item.add_marker(pytest.mark.skip(reason=why))
        elif TEST_RUNTIME == "runsc" and item.get_closest_marker("runc_only"):
            item.add_marker(pytest.mark.skip(reason=f"runc only: {item.get_closest_marker('runc_only').args[0]}"))


# Short SDK timeouts: the SDK's sync calls block in native code that pytest-timeout cannot interrupt.
REQ_TIMEOUT = 60.0


@pytest.fixture(scope="session", autouse=True)
def _sweep_session_leftovers() -> Iterator[None]:
    yield
    sweep(*session_selector(SESSION_LABEL))


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorProcess]:
    data_dir = Path(tempfile.mkdtemp(prefix="tle-test-", dir="/tmp"))
    proc = EmulatorProcess(data_dir=data_dir, api_port=_API_PORT, proxy_port=_PROXY_PORT).start()
    yield proc
    proc.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def sb(emulator: EmulatorProcess):
    """One sandbox shared by a module's data-plane tests (1 cpu, 512 MB), terminated afterwards."""
    from tensorlake.sandbox import Sandbox

    sandbox = Sandbox.create(cpus=1.0, memory_mb=512, request_timeout=REQ_TIMEOUT)
    yield sandbox
    sandbox.terminate()


@pytest.fixture
def api_url(emulator: EmulatorProcess) -> str:
    return emulator.api_url

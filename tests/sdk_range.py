"""Run the project's SDK-level tests against other tensorlake releases than the pinned one (issue 17).

    python tests/sdk_range.py                 # the oldest supported release and the newest on PyPI
    python tests/sdk_range.py 0.5.120         # one given release
    python tests/sdk_range.py --list          # what would run, nothing installed

Each release gets its own virtual environment under $TLE_SDK_VENVS (default <repo>/.venv-sdk/<version>),
made once (the project installed editable without its test extra, the release, pytest) and reused while
pyproject.toml is unchanged. The newest release is asked of PyPI through pip at every run, so a release
that changes the protocol shows on the day it ships; when the index cannot be reached this says so and
tests the oldest only. Exit status: 0 when every run passed (or was skipped), 1 otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The oldest release that shares this protocol (README "Tested SDK releases" says how it was found).
OLDEST = "0.5.40"
# A chosen subset that runs in a few minutes: lifecycle, data plane and the product page's examples.
TESTS = ["tests/test_lifecycle.py", "tests/test_dataplane.py"]
# Tests that need SDK API newer than some releases (API, not the wire protocol): each is deselected when the
# release under test lacks what the probe looks for (the probe runs in that release's environment).
NEEDS = {
    "tests/test_lifecycle.py::test_named_get_or_create_connect_and_conflict": "has(Sandbox, 'get_or_create')",
    "tests/test_lifecycle.py::test_update_rename_ports_and_live_resize": "takes(Sandbox.update, 'cpus')",
    "tests/test_lifecycle.py::test_no_network": "has(SandboxInfo, 'network_policy')",
    "tests/test_lifecycle.py::test_wait_false_and_entrypoint": "takes(Sandbox.create, 'wait')",
    "tests/test_dataplane.py::test_run_exit_codes_and_streams": "has(CommandResult, 'timed_out')",
    "tests/test_dataplane.py::test_oom_killed_process_reports_it": "has(CommandResult, 'reason')",
    "tests/test_dataplane.py::test_managed_process_restart": "takes(Sandbox.restart_process, 'process')",
    "tests/test_lifecycle.py::test_runtime_per_sandbox_by_image_suffix": "has(SandboxInfo, 'runtime')",
}
# Releases before 0.5.58 do not route by the sandbox_url the emulator answers: they take the proxy from
# TENSORLAKE_SANDBOX_PROXY_URL (or assume localhost:9443), which tests/conftest.py sets for them. A test
# that starts an emulator of its own on other ports cannot reach it that way and is left out for them.
SANDBOX_URL_SINCE = (0, 5, 58)
OWN_EMULATOR = ["tests/test_lifecycle.py::test_restart_keeps_running_sandbox_and_reconciles"]
PROBE = """
import inspect, json, sys
from tensorlake.sandbox import Sandbox
from tensorlake.sandbox.models import CommandResult, SandboxInfo
def has(cls, name):
    return any(name in getattr(cls, attr, {}) for attr in ("model_fields", "__dataclass_fields__", "__annotations__")) \
        or hasattr(cls, name)
def takes(fn, name):
    return name in inspect.signature(fn).parameters
print(json.dumps([test for test, probe in json.loads(sys.argv[1]).items() if not eval(probe)]))
"""
TEST_DEPS = ["pytest>=8", "pytest-asyncio>=0.23", "pytest-timeout>=2.3", "pytest-rerunfailures>=14", "h11>=0.14"]


def say(msg: str) -> None:
    print(f"[sdk-range] {msg}", flush=True)


def pinned() -> str:
    match = re.search(r'"tensorlake==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert match, "pyproject.toml pins no tensorlake release"
    return match.group(1)


def newest() -> str | None:
    """The newest tensorlake release on the package index, through pip (None when it cannot be reached)."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "tensorlake"],
                             capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    match = re.search(r"^tensorlake \(([^)]+)\)", out.stdout, re.M)
    return match.group(1) if match else None


def venv_for(version: str) -> Path:
    """The virtual environment of one release, made or refreshed when needed."""
    root = Path(os.environ.get("TLE_SDK_VENVS", REPO / ".venv-sdk"))
    venv = root / version
    want = f"{version} {hashlib.sha256((REPO / 'pyproject.toml').read_bytes()).hexdigest()[:16]}"
    stamp = venv / ".tle-sdk-range"
    if stamp.exists() and stamp.read_text() == want and (venv / "bin" / "python").exists():
        return venv
    say(f"{version}: installing into {venv}")
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    log = root / f"{version}.pip.log"
    with log.open("w") as out:
        done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                               "-e", str(REPO), f"tensorlake=={version}", *TEST_DEPS],
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"pip install of tensorlake=={version} failed (see {log})")
    stamp.write_text(want)
    return venv


def run(version: str, extra: list[str]) -> bool:
    venv = venv_for(version)
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", PROBE, json.dumps(NEEDS)],
                           capture_output=True, text=True, check=True)
    missing = json.loads(probe.stdout)
    for test in missing:
        say(f"{version}: deselected {test.split('::')[1]} (its SDK API is newer: {NEEDS[test]} is false)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if tuple(int(p) for p in version.split(".")) < SANDBOX_URL_SINCE:
        say(f"{version}: routes by TENSORLAKE_SANDBOX_PROXY_URL, not sandbox_url; deselected "
            + ", ".join(t.split("::")[1] for t in OWN_EMULATOR) + " (an emulator of its own)")
        env["TLE_TEST_PROXY_URL_ENV"] = "1"
        missing += OWN_EMULATOR
    deselect = [arg for test in missing for arg in ("--deselect", test)]
    say(f"{version}: running {' '.join(TESTS)}")
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *TESTS, *deselect, *extra], cwd=REPO, env=env)
    say(f"{version}: {'passed' if done.returncode == 0 else 'FAILED'}")
    return done.returncode == 0


def main(argv: list[str]) -> int:
    listing = "--list" in argv
    args = [a for a in argv if a != "--list"]
    versions = [a for a in args if re.fullmatch(r"[0-9]+(\.[0-9]+)+", a)]
    extra = [a for a in args if a not in versions]
    if not versions:
        versions = [OLDEST]
        latest = newest()
        if latest is None:
            say("PyPI cannot be reached: the newest release is not tested this time")
        elif latest == pinned():
            say(f"the newest release on PyPI is the pinned {latest}, tested by the main suite")
        else:
            say(f"the newest release on PyPI is {latest} (pinned: {pinned()})")
            versions.append(latest)
    if listing:
        print(" ".join(versions))
        return 0
    results = {v: run(v, extra) for v in versions}
    say("summary: " + ", ".join(f"{v} {'passed' if ok else 'FAILED'}" for v, ok in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

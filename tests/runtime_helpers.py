"""What the tests need to know about the runtime under test (TLE_TEST_RUNTIME; docs/gvisor.md)."""

from __future__ import annotations

import os
import subprocess

from emulator.labels import LABEL_SANDBOX

RUNTIME = os.environ.get("TLE_TEST_RUNTIME", "").strip() or "runc"
GVISOR = RUNTIME == "runsc"


def container_pid(sandbox_id: str) -> int:
    """The host pid Docker reports for the sandbox's container (runc: the agent; runsc: runsc's sandbox)."""
    out = subprocess.run(["docker", "ps", "-q", "--no-trunc", "--filter", f"label={LABEL_SANDBOX}={sandbox_id}"],
                         capture_output=True, text=True, timeout=30, check=True).stdout.split()
    assert len(out) == 1, f"expected one container of sandbox {sandbox_id}, found {out}"
    pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", out[0]], capture_output=True, text=True,
                         timeout=30, check=True).stdout.strip()
    return int(pid)


def host_cgroup_value(sandbox_id: str, controller: str, name: str) -> str:
    """A cgroup v1 file of the sandbox's container as the host sees it: the limit the host enforces.

    Under gVisor the sandbox's own /sys/fs/cgroup is gVisor's emulation (it shows no host limit), while
    the runsc sandbox process runs in the container's host cgroup, which is what holds it to its limits.
    """
    pid = container_pid(sandbox_id)
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                with open(f"/sys/fs/cgroup/{controllers}{path}/{name}") as g:
                    return g.read().strip()
    raise AssertionError(f"no {controller} cgroup for pid {pid}")

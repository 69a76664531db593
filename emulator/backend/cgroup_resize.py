"""Live resize of a gVisor sandbox through its host cgroup (docs/gvisor.md).

Docker resizes a container by calling its runtime's `update`, which runsc does not have. The limits
that hold a gVisor sandbox are those of the host cgroup its runsc sandbox process runs in (the same
one Docker made for the container), so a resize writes them there: cgroup v1 memory and cpu files of
Docker's State.Pid. Docker's own view of the container (`docker inspect`) keeps the create-time values.
"""

from __future__ import annotations

from pathlib import Path

from emulator.errors import EmulatorError

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_dir(pid: int, controller: str) -> Path:
    """The cgroup v1 folder of `pid` for `controller`. Raises EmulatorError when there is none."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError as exc:
        raise EmulatorError(f"cannot read the cgroups of the sandbox process {pid}: {exc}") from exc
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return CGROUP_ROOT / controllers / path.lstrip("/")
    raise EmulatorError(f"no cgroup v1 '{controller}' controller for pid {pid} (a cgroup v2 host is not handled "
                        "for live resize of gVisor sandboxes)")


def _write(path: Path, value: int) -> None:
    try:
        path.write_text(str(value))
    except OSError as exc:
        raise EmulatorError(f"cannot write {value} to {path}: {exc}") from exc


def resize(pid: int, cpus: float, memory_mb: int) -> None:
    """Set the host cgroup of `pid` to `cpus` cores (CFS quota) and `memory_mb` MiB (memory and
    memory+swap). Raises EmulatorError naming the file that could not be written (a shrink below what
    the sandbox uses, say)."""
    mem = _cgroup_dir(pid, "memory")
    limit = memory_mb * 1024 * 1024
    current = int((mem / "memory.limit_in_bytes").read_text())
    memsw = mem / "memory.memsw.limit_in_bytes"
    # memory+swap may never be below memory: raise it first when growing, lower it last when shrinking
    order = [memsw, mem / "memory.limit_in_bytes"] if limit > current else [mem / "memory.limit_in_bytes", memsw]
    for f in order:
        if f.exists():
            _write(f, limit)
    cpu = _cgroup_dir(pid, "cpu")
    period = int((cpu / "cpu.cfs_period_us").read_text())
    _write(cpu / "cpu.cfs_quota_us", int(cpus * period))

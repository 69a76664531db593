"""Start-up probe: can this host dump and restore a container's memory with CRIU?

Runs `criu check` (a subprocess, awaited without blocking the loop) and reports the result in
the start-up log and the emulator's capabilities.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass

from emulator.checkpoints.criu_config import NFTABLES_LOCK, RUNC_CONF, ensure_runc_conf


@dataclass
class CriuProbe:
    ok: bool = False
    reason: str = "not probed"
    version: str | None = None

    @classmethod
    async def run(cls, docker_experimental: bool) -> CriuProbe:
        if shutil.which("criu") is None:
            return cls(False, "criu is not installed (run the set-up step, which provides CRIU >= 4.2)")
        version = await _output("criu", "--version")
        ver = next((ln.split()[1] for ln in version.splitlines() if ln.startswith("Version:")), None)
        check = await _output("criu", "check")
        if "Looks good" not in check:
            return cls(False, f"'criu check' fails: {check.strip().splitlines()[-1] if check.strip() else '?'}",
                       ver)
        if not docker_experimental:
            return cls(False, "the Docker engine runs without --experimental, so it has no checkpoint API", ver)
        nft = await _output("criu", "check", "--feature", "network_lock_nftables")
        extra = NFTABLES_LOCK if "is supported" in nft else None
        conf_problem = await asyncio.to_thread(ensure_runc_conf, RUNC_CONF, extra)
        if conf_problem:  # dumps still work, but not of TCP connections or file locks
            return cls(True, f"criu {ver} passes criu check; CRIU options missing: {conf_problem}", ver)
        return cls(True, f"criu {ver} passes criu check; options from {RUNC_CONF}", ver)


async def _output(*cmd: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return out.decode(errors="replace")
    except (OSError, asyncio.TimeoutError) as exc:
        return f"failed to run {cmd[0]}: {exc}"

"""The CRIU options every dump and restore of a sandbox needs, in the one place both paths read.

Sandbox dumps are made by `runc checkpoint` (the runc mechanism) or by containerd calling runc
(Docker's checkpoint API), and every restore goes through containerd calling `runc restore`.
Neither Docker 20.10 nor containerd passes CRIU options such as --tcp-established, but runc
(1.1, through go-criu's RPC `config_file`) hands CRIU the file /etc/criu/runc.conf on every
checkpoint and restore (the `org.criu.config` annotation would override it; Docker 20.10 cannot set
annotations). Verified here: a dump log starts with "Parsing config file /etc/criu/runc.conf".
So the options live in that file, the same for both mechanisms and both directions.

What each option buys (CRIU's own list of state that needs an option):
- tcp-established: established TCP connections (loopback clients and servers inside the sandbox;
  a half-closed one too). Without it: "Connected TCP socket, consider using --tcp-established".
- file-locks: flock, POSIX (fcntl/lockf) and OFD locks. Without it: "Some file locks are hold".
- skip-in-flight: a connection still in a listening socket's accept queue is dropped (its client
  sees a reset, as after a lost SYN) instead of failing the whole dump.
- ghost-limit: a deleted-but-open file is stored in the dump; CRIU's default refuses those over 1 MB.
- network-lock nftables (only where `criu check --feature network_lock_nftables` passes): while a
  sandbox's network namespace is dumped or restored CRIU blocks its traffic and lets it through
  again after. Its default does that by running iptables-restore, a process each time (40 ms on
  the project's hosts; about a tenth of a 200 MB resume); nftables is a library call.
Not set: ext-unix-sk and shell-job concern sockets and terminals whose peer is outside the dumped
tree; a sandbox has none once the proxy's connections are closed, and a PTY session lives inside.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RUNC_CONF = Path(os.environ.get("TLE_CRIU_RUNC_CONF", "/etc/criu/runc.conf"))
CRIU_OPTIONS: dict[str, str | None] = {
    "tcp-established": None,
    "file-locks": None,
    "skip-in-flight": None,
    "ghost-limit": "512M",
}
# Added when CRIU supports it (see the list above); the default, iptables, is what CRIU does without it.
NFTABLES_LOCK: dict[str, str | None] = {"network-lock": "nftables"}
_HEADER = "# CRIU options for runc checkpoint/restore, kept by tensorlake-emulator (emulator/checkpoints/criu_config.py)\n"  # noqa: E501


def ensure_runc_conf(path: Path = RUNC_CONF, extra: dict[str, str | None] | None = None) -> str | None:
    """Make `path` carry every option of CRIU_OPTIONS and of `extra`, keeping any other line it has.

    Returns None when the file is complete (written or already so), else why it could not be
    written (the caller reports it: dumps of TCP or locks would then fail). An option already in the
    file with another value is left as the host's administrator set it.
    """
    try:
        text = path.read_text() if path.exists() else ""
    except OSError as exc:
        return f"cannot read {path}: {exc}"
    present = {ln.split()[0] for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")}
    missing = [(k, v) for k, v in {**CRIU_OPTIONS, **(extra or {})}.items() if k not in present]
    if not missing:
        return None
    body = text if text.endswith("\n") or not text else text + "\n"
    if not text:
        body = _HEADER
    body += "".join(f"{k} {v}\n" if v else f"{k}\n" for k, v in missing)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(body)
        os.replace(tmp, path)  # atomic: a dump starting meanwhile reads the old or the new file
    except OSError as exc:
        return f"cannot write {path}: {exc}"
    log.info("checkpoints: CRIU options %s added to %s", ", ".join(k for k, _ in missing), path)
    return None

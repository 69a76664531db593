"""Unit tests of the CRIU option file and of how a failed dump is put into words (no Docker, no CRIU)."""

from __future__ import annotations

from pathlib import Path

from emulator.api.errors import error_body
from emulator.checkpoints.criu_config import CRIU_OPTIONS, NFTABLES_LOCK, ensure_runc_conf
from emulator.checkpoints.criu_errors import snapshot_failure
from emulator.errors import SnapshotFailed

# The tail of a real dump log of a sandbox with an interactive sh on a PTY (CRIU 4.3).
PTY_LOG = """(00.000000) Parsing config file /etc/criu/runc.conf
(00.040830) Error (criu/util.c:1532): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.209953) Error (criu/fsnotify.c:207): fsnotify: overlay walk: readdir failed on //proc/13/net: Invalid argument
(00.206064) Error (criu/tty.c:2286): tty: ctty inheritance detected sid/pgrp 7 (ctty pid_real 24797 pty pid_real 2)
(00.266784) Error (criu/cr-dump.c:2005): Dumping FAILED.
"""
RUNC_SAYS = 'time="2026-11-30T18:08:30Z" level=error msg="criu failed: type NOTIFY errno 0\\nlog file: {log}"'


def test_runc_conf_is_written_with_every_option(tmp_path: Path) -> None:
    conf = tmp_path / "criu" / "runc.conf"
    assert ensure_runc_conf(conf) is None
    lines = [ln for ln in conf.read_text().splitlines() if not ln.startswith("#")]
    assert {ln.split()[0] for ln in lines} == set(CRIU_OPTIONS)
    assert "ghost-limit 512M" in lines


def test_runc_conf_takes_the_extra_options_given(tmp_path: Path) -> None:
    conf = tmp_path / "runc.conf"
    assert ensure_runc_conf(conf, NFTABLES_LOCK) is None
    assert "network-lock nftables" in conf.read_text().splitlines()


def test_runc_conf_keeps_the_hosts_lines_and_adds_only_what_is_missing(tmp_path: Path) -> None:
    conf = tmp_path / "runc.conf"
    conf.write_text("tcp-established\nghost-limit 2G\nlog-file /tmp/x.log")
    assert ensure_runc_conf(conf) is None
    lines = conf.read_text().splitlines()
    assert lines[:3] == ["tcp-established", "ghost-limit 2G", "log-file /tmp/x.log"]  # untouched
    assert sorted(lines[3:]) == ["file-locks", "skip-in-flight"]
    before = conf.read_text()
    assert ensure_runc_conf(conf) is None and conf.read_text() == before  # complete: left alone


def test_runc_conf_that_cannot_be_written_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    problem = ensure_runc_conf(blocker / "runc.conf")  # its folder is a file
    assert problem is not None and "cannot" in problem


def test_dump_failure_names_the_cause_from_the_log(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text(PTY_LOG)
    err = snapshot_failure(RUNC_SAYS.format(log=log), log)
    assert isinstance(err, SnapshotFailed) and err.status == 409 and err.code == "SNAPSHOT_FAILED"
    assert err.message.startswith("snapshot of the process state failed: ")
    assert "/dev/tty" in err.message and "ctty inheritance detected" in err.message
    assert "RLIMIT_NOFILE" not in err.message and "overlay walk" not in err.message  # benign lines left out
    assert error_body(err.message, err.code)["code"] == "SNAPSHOT_FAILED"
    assert err.permanent  # the engine does not retry what would fail the same way


def test_a_unix_peer_outside_is_worth_a_retry(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text("(00.1) Error (criu/sk-unix.c:351): unix: Can't dump half of stream unix connection.\n")
    err = snapshot_failure("x", log)
    assert "peer outside" in err.message and not err.permanent


def test_dump_log_is_found_from_the_tools_answer(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text("(00.1) Error (criu/sk-inet.c:201): inet: Connected TCP socket, consider using "
                   "--tcp-established option.\n")
    err = snapshot_failure("checkpoint failed: " + RUNC_SAYS.format(log=log))  # Docker's wording, no path given
    assert "established TCP connection" in err.message and "runc.conf" in err.message


def test_unknown_failure_quotes_criu_or_the_tool(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text("(00.1) Error (criu/foo.c:1): foo: something new\n")
    assert snapshot_failure("x", log).message == (
        "snapshot of the process state failed (criu: Error (criu/foo.c:1): foo: something new)")
    assert snapshot_failure("runc: it broke").message == "snapshot of the process state failed (criu: runc: it broke)"


# /proc/net/tcp and tcp6 as the kernel prints them (addresses in little-endian 32-bit words).
TCP4 = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1B5B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:1B59 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 050011AC:1B5B 050011AC:84F2 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 050011AC:1B5C 0A0A0A0A:01BB 06 00000000:00000000 00:00000000 00000000     0        0 0 1
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000001000000:1B59 00000000000000000000000001000000:9C40 01 00000000:00000000
   1: 0000000000000000FFFF0000050011AC:0050 0000000000000000FFFF00000A0A0A0A:C350 01 00000000:00000000
   2: 000080FE00000000FF02420A030011AC:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000
"""


def test_tcp_tables_name_only_sockets_tied_to_the_sandbox_address() -> None:
    from emulator.checkpoints.preflight import bound_in_table

    # Wildcard listener, loopback connection and TIME_WAIT are fine; the bridge address is not.
    assert bound_in_table(TCP4) == ["172.17.0.5:7003 -> 172.17.0.5:34034"]
    assert bound_in_table(TCP6) == ["172.17.0.5:80 -> 10.10.10.10:50000", "listening on fe80::a42:2ff:ac11:3:8080"]

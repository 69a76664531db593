"""A program that holds every kind of process state CRIU needs an option or special handling for,
and proves each one still works on every tick. Stdlib only: it runs inside a sandbox (python3).

Each tick (0.1 s) exercises every resource and rewrites /tmp/fid/status.json with a counter per
resource, the errors seen, the program's token (drawn once at start: a restarted program would
draw another) and the pids of its helpers. A resource that stopped working stops its counter and
records an error, so a check after a suspend/resume or checkpoint/restore is: every counter went
on, no errors, same token.

Held: established TCP on loopback (a line sent and acknowledged each tick, both sides), a listening
TCP socket (a fresh connection accepted each tick), a half-closed TCP connection (one side shut its
writing half; the other still sends), a listening unix socket, a connected unix stream pair, a unix
datagram socketpair, flock / POSIX (lockf) / OFD locks, inotify, timerfd, eventfd, signalfd, epoll,
an anonymous MAP_SHARED mapping, a POSIX shm file in /dev/shm and a SysV shm segment (each shared
with a child that counts in it), a memfd, a deleted-but-open file of 3 MB, pipes to a child, a FIFO, a
zombie, and threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import json
import mmap
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

D = "/tmp/fid"
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
counts: dict[str, int] = {}
errors: list[str] = []


def bump(name: str) -> None:
    counts[name] = counts.get(name, 0) + 1


def check(name: str, fn) -> None:  # type: ignore[no-untyped-def]
    try:
        fn()
        bump(name)
    except Exception as exc:  # noqa: BLE001 - recorded, the status file reports it
        if len(errors) < 50:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")


def sys_fd(ret: int, what: str) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


os.makedirs(f"{D}/watched", exist_ok=True)
token = os.urandom(8).hex()

# --- TCP: listener, established pair, half-closed pair --------------------------------------
lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", 7001))
lst.listen(16)
cli = socket.create_connection(("127.0.0.1", 7001))
srv, _ = lst.accept()
half_cli = socket.create_connection(("127.0.0.1", 7001))
half_srv, _ = lst.accept()
half_cli.shutdown(socket.SHUT_WR)  # the client's writing half is closed; the server still sends
for s in (cli, srv, half_cli, half_srv):
    s.settimeout(3)
srv_file, cli_file = srv.makefile("rb"), cli.makefile("rb")
lst.settimeout(3)


def tcp_tick() -> None:
    cli.sendall(b"line %d\n" % counts.get("tcp", 0))
    line = srv_file.readline()
    assert line.startswith(b"line "), line
    srv.sendall(b"ack " + line)
    assert cli_file.readline().startswith(b"ack line "), "no ack"


def tcp_listen_tick() -> None:
    c = socket.create_connection(("127.0.0.1", 7001), timeout=3)
    a, _ = lst.accept()
    c.sendall(b"x")
    assert a.recv(1) == b"x"
    c.close()
    a.close()


def half_tick() -> None:
    half_srv.sendall(b"h")
    assert half_cli.recv(1) == b"h"
    assert half_srv.recv(1, socket.MSG_DONTWAIT) == b""  # still sees the client's EOF


# --- unix sockets ----------------------------------------------------------------------------
upath = f"{D}/u.sock"
if os.path.exists(upath):
    os.unlink(upath)
ulst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ulst.bind(upath)
ulst.listen(8)
ucli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ucli.connect(upath)
usrv, _ = ulst.accept()
dg_a, dg_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
for s in (ulst, ucli, usrv, dg_a, dg_b):
    s.settimeout(3)


def unix_tick() -> None:
    ucli.sendall(b"u")
    assert usrv.recv(1) == b"u"
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(upath)
    a, _ = ulst.accept()
    c.close()
    a.close()
    dg_a.send(b"dgram")
    assert dg_b.recv(16) == b"dgram"


# --- file locks: flock, POSIX (lockf), OFD -----------------------------------------------------
lock_files = {}
for kind in ("flock", "posix", "ofd"):
    fd = os.open(f"{D}/{kind}.lck", os.O_RDWR | os.O_CREAT, 0o644)
    lock_files[kind] = fd
fcntl.flock(lock_files["flock"], fcntl.LOCK_EX | fcntl.LOCK_NB)
fcntl.lockf(lock_files["posix"], fcntl.LOCK_EX | fcntl.LOCK_NB)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
fcntl.fcntl(lock_files["ofd"], F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0) + b"\0" * 4)

# --- inotify, timerfd, eventfd, signalfd, epoll ------------------------------------------------
ino = sys_fd(libc.inotify_init1(os.O_NONBLOCK), "inotify_init1")
sys_fd(libc.inotify_add_watch(ino, f"{D}/watched".encode(), 0x100 | 0x200), "inotify_add_watch")  # CREATE|DELETE
tfd = sys_fd(libc.timerfd_create(1, os.O_NONBLOCK), "timerfd_create")  # CLOCK_MONOTONIC
spec = struct.pack("qqqq", 0, 50_000_000, 0, 50_000_000)  # every 50 ms
sys_fd(libc.timerfd_settime(tfd, 0, spec, None), "timerfd_settime")
efd = os.eventfd(0, os.EFD_NONBLOCK)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
mask = ctypes.create_string_buffer(128)
ctypes.memmove(mask, struct.pack("Q", 1 << (signal.SIGUSR1 - 1)), 8)
sfd = sys_fd(libc.signalfd(-1, mask, os.O_NONBLOCK), "signalfd")
ep = select.epoll()
for fd in (ino, tfd, efd, sfd):
    ep.register(fd, select.EPOLLIN)


def ready(fd: int) -> None:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if any(f == fd for f, _ in ep.poll(0.5)):
            return
    raise TimeoutError(f"epoll: fd {fd} never became ready")


def inotify_tick() -> None:
    p = f"{D}/watched/f{counts.get('inotify', 0) % 4}"
    open(p, "w").close()
    os.unlink(p)
    ready(ino)
    assert len(os.read(ino, 4096)) >= 16


def timer_tick() -> None:
    ready(tfd)
    assert struct.unpack("Q", os.read(tfd, 8))[0] >= 1


def event_tick() -> None:
    os.eventfd_write(efd, 3)
    ready(efd)
    assert os.eventfd_read(efd) == 3


def signal_tick() -> None:
    os.kill(os.getpid(), signal.SIGUSR1)
    ready(sfd)
    assert struct.unpack_from("I", os.read(sfd, 128))[0] == signal.SIGUSR1


# --- shared memory (anonymous, POSIX /dev/shm, SysV), memfd, deleted file ---------------------
anon = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED)
shm_fd = os.open("/dev/shm/fid-shm", os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(shm_fd, 4096)
pshm = mmap.mmap(shm_fd, 4096, flags=mmap.MAP_SHARED)
libc.shmat.restype = ctypes.c_void_p
shmid = sys_fd(libc.shmget(0, 4096, 0o1000 | 0o600), "shmget")  # IPC_PRIVATE, IPC_CREAT
sysv_addr = libc.shmat(shmid, None, 0)
if sysv_addr in (None, ctypes.c_void_p(-1).value):
    raise OSError(ctypes.get_errno(), "shmat")
sysv = (ctypes.c_uint64 * 1).from_address(sysv_addr)
mfd = os.memfd_create("fid-memfd")
os.write(mfd, b"memfd-" + token.encode())
dfd = os.open(f"{D}/deleted.dat", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(dfd, b"deleted-" + token.encode())
os.pwrite(dfd, b"end", 3 << 20)  # 3 MB: past CRIU's default ghost-limit of 1 MB
os.unlink(f"{D}/deleted.dat")

# --- pipes and a FIFO to children; a zombie ---------------------------------------------------
to_child_r, to_child_w = os.pipe()
from_child_r, from_child_w = os.pipe()
fifo = f"{D}/fifo"
if not os.path.exists(fifo):
    os.mkfifo(fifo)
helper = os.fork()
if helper == 0:  # echoes the pipe, feeds the FIFO, counts in all three shared memories
    fifo_w = os.open(fifo, os.O_WRONLY)
    while True:
        b = os.read(to_child_r, 1)
        if not b:
            os._exit(0)
        anon[0:8] = struct.pack("Q", struct.unpack("Q", anon[0:8])[0] + 1)
        pshm[0:8] = struct.pack("Q", struct.unpack("Q", pshm[0:8])[0] + 1)
        sysv[0] += 1
        os.write(fifo_w, b"f")
        os.write(from_child_w, b)
fifo_r = os.open(fifo, os.O_RDONLY)
zombie = os.fork()
if zombie == 0:
    os._exit(7)  # never reaped while the program runs: a zombie


def pipe_tick() -> None:
    before = (struct.unpack("Q", anon[0:8])[0], struct.unpack("Q", pshm[0:8])[0], sysv[0])
    os.write(to_child_w, b"p")
    assert os.read(from_child_r, 1) == b"p"  # written after the FIFO byte and the counts
    assert os.read(fifo_r, 1) == b"f"
    after = (struct.unpack("Q", anon[0:8])[0], struct.unpack("Q", pshm[0:8])[0], sysv[0])
    assert all(a == b + 1 for a, b in zip(after, before, strict=True)), (before, after)


def memfd_tick() -> None:
    got = (os.pread(mfd, 64, 0), os.pread(dfd, 24, 0), os.pread(dfd, 3, 3 << 20))
    assert got == (b"memfd-" + token.encode(), b"deleted-" + token.encode(), b"end"), got


def zombie_tick() -> None:
    with open(f"/proc/{zombie}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] == "Z", "not a zombie"


# --- threads --------------------------------------------------------------------------------
thread_counts = [0, 0, 0]


def spin(i: int) -> None:
    while True:
        thread_counts[i] += 1
        time.sleep(0.02)


for i in range(3):
    threading.Thread(target=spin, args=(i,), daemon=True).start()
seen_threads: list[int] | None = None  # set by the first tick: a thread may not have run yet


def threads_tick() -> None:
    global seen_threads
    now = list(thread_counts)
    if seen_threads is not None:  # every thread ran since the last tick (0.1 s against 0.02 s steps)
        assert all(n > s for n, s in zip(now, seen_threads, strict=True)), (seen_threads, now)
    seen_threads = now


TICKS = [("tcp", tcp_tick), ("tcp_listen", tcp_listen_tick), ("tcp_half_closed", half_tick),
         ("unix", unix_tick), ("inotify", inotify_tick), ("timerfd", timer_tick), ("eventfd", event_tick),
         ("signalfd", signal_tick), ("pipes_fifo_shm", pipe_tick), ("memfd_deleted", memfd_tick),
         ("zombie", zombie_tick), ("threads", threads_tick)]

while True:
    for name, fn in TICKS:
        check(name, fn)
    bump("ticks")
    status = {"token": token, "pid": os.getpid(), "helper": helper, "zombie": zombie,
              "counts": counts, "errors": errors}
    with open(f"{D}/status.tmp", "w") as f:
        json.dump(status, f)
    os.replace(f"{D}/status.tmp", f"{D}/status.json")
    if counts["ticks"] == 1:
        print("ready", flush=True)  # what a benchmark waits for
    time.sleep(0.1)
    if len(sys.argv) > 1 and counts["ticks"] >= int(sys.argv[1]):
        break

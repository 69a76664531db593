#!/usr/bin/env bash
# Provide CRIU >= 4.2 on PATH without touching the host's libc (see docs/host.md):
# bookworm's criu 3.17 fails on this kernel and trixie's 4.1 cannot dump TCP sockets, so we
# debootstrap a trixie root of its own, install Debian experimental's criu inside it, and put a
# wrapper on PATH that runs that binary through that root's own dynamic loader.
# Idempotent: exits at once when a good criu is already on PATH.
set -euo pipefail

ROOT=${TLE_CRIU_ROOT:-/opt/tensorlake-emulator/criu-root}
WRAPPER=${TLE_CRIU_WRAPPER:-/usr/local/sbin/criu}
MIRROR=${TLE_DEBIAN_MIRROR:-http://deb.debian.org/debian}

version_ok() {
  local v
  v=$(criu --version 2>/dev/null | awk '/^Version:/ {print $2}') || return 1
  [ -n "$v" ] || return 1
  # sort -V puts the smaller first; 4.2 must not be bigger than what we have.
  [ "$(printf '%s\n4.2\n' "$v" | sort -V | head -n1)" = "4.2" ]
}

# The CRIU options sandbox dumps and restores need (tcp-established, file-locks, ...), in the file runc
# hands CRIU on every checkpoint and restore. One list, in emulator/checkpoints/criu_config.py; the
# emulator writes it too at start-up, but when the emulator runs in a container only this host-side
# step (or the /etc/criu mount in docker-compose.yml) reaches the host's runc.
write_runc_conf() {
  local top  # the folder that holds the `emulator` package: the repository, or site-packages
  top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  python3 -c "import sys; sys.path.insert(0, sys.argv[1]); from emulator.checkpoints.criu_config import ensure_runc_conf as e; p = e(); print('criu: runc.conf: ' + (p or 'complete')); sys.exit(1 if p else 0)" "$top" \
    || echo "criu: could not write the CRIU options; TCP connections and file locks will not survive dumps" >&2
}

if version_ok && criu check >/dev/null 2>&1; then
  echo "criu: $(criu --version | awk '/^Version:/ {print $2}') already on PATH, criu check passes"
  write_runc_conf
  exit 0
fi

command -v debootstrap >/dev/null || {
  echo "criu: installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
}

if [ ! -x "$ROOT/usr/sbin/criu" ]; then
  if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    echo "criu: debootstrap trixie minbase into $ROOT (about a minute)"
    rm -rf "$ROOT.tmp"
    mkdir -p "$(dirname "$ROOT")"
    debootstrap --variant=minbase trixie "$ROOT.tmp" "$MIRROR" >/tmp/tle-criu-debootstrap.log 2>&1 || {
      echo "criu: debootstrap failed, see /tmp/tle-criu-debootstrap.log" >&2; exit 1; }
    mv "$ROOT.tmp" "$ROOT"
  fi
  echo "criu: installing criu from Debian experimental inside $ROOT"
  # experimental's criu depends on libraries (libnet9, libnl-3 >= 3.11) that only sid carries.
  printf "deb %s sid main\ndeb %s experimental main\n" "$MIRROR" "$MIRROR" >"$ROOT/etc/apt/sources.list.d/experimental.list"
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
  chroot "$ROOT" apt-get -o Acquire::Check-Valid-Until=false update -q >/tmp/tle-criu-apt.log 2>&1
  chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false \
    install -y -q -t experimental criu >>/tmp/tle-criu-apt.log 2>&1 || {
      echo "criu: apt-get install criu failed, see /tmp/tle-criu-apt.log" >&2; exit 1; }
fi

mkdir -p "$(dirname "$WRAPPER")"
cat >"$WRAPPER" <<EOF
#!/bin/sh
# Installed by tensorlake-emulator: CRIU from $ROOT, run with that root's own libc.
exec "$ROOT/lib64/ld-linux-x86-64.so.2" --library-path "$ROOT/lib/x86_64-linux-gnu:$ROOT/usr/lib/x86_64-linux-gnu" "$ROOT/usr/sbin/criu" "\$@"
EOF
chmod 755 "$WRAPPER"

if version_ok && criu check >/dev/null 2>&1; then
  echo "criu: $(criu --version | awk '/^Version:/ {print $2}') installed at $WRAPPER, criu check passes"
  write_runc_conf
else
  echo "criu: installed but 'criu check' fails:" >&2
  criu check 2>&1 | tail -n 5 >&2 || true
  exit 1
fi

#!/usr/bin/env bash
# gVisor for sandboxes (docs/gvisor.md): install a runsc that can create host unix sockets on bind
# mounts (the agent channel needs --host-uds=create; bookworm's runsc 0.0~20221219 has no such flag),
# register it with Docker as the runtimes "runsc", "runsc-nonet" and "runsc-netstack", reload dockerd with
# SIGHUP (never a restart: running containers stay untouched), and prove them with tiny containers.
#
# runsc is a static Go binary, so Debian trixie's package is taken with `apt-get download` through a
# private apt configuration (the host's sources and libc stay as they are) and its one file installed
# as $BIN (with $BIN.deb naming the package it came from). Idempotent; one line per step; exits 0 with "gvisor: NOT AVAILABLE (why)" when it cannot,
# so the caller carries on with runc. Usage: gvisor-install.sh [IMAGE-for-the-probe]
set -uo pipefail

BIN=${TLE_RUNSC_BIN:-/usr/local/sbin/runsc-tle}
NAME=${TLE_RUNSC_NAME:-runsc}
DAEMON_JSON=${TLE_DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
MIRROR=${TLE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# trixie's build (Go 1.24): sid's rebuild of the same release with Go 1.26 panics at random in the
# sentry ("running on goroutine N (task goroutine ... is 0)"; the container exits 2 with no output).
SUITE=${TLE_RUNSC_SUITE:-trixie}
PROBE_IMAGE=${1:-${TLE_DEFAULT_IMAGE:-tensorlake-emulator/sandbox:latest}}
# --host-uds=create: a socket the agent binds on its bind-mounted run folder is a host socket (made by
#   runsc's gofer), so the host connects to it exactly as under runc: one data path.
# --network=host: gVisor's own network stack refuses to start under this Docker ("cannot run with
#   network enabled in root network namespace": its root-netns test misfires on new kernels); with
#   host, the sandbox's sockets are host sockets in the container's own network namespace (the one
#   Docker made), so --network=none, bridge networking and the iptables egress rules work as under runc.
# --overlay2=none: the sandbox's file writes go through the gofer to the container's own overlayfs
#   layer, as under runc, so `docker commit` (filesystem snapshots) and `docker diff` see them (runsc's
#   default keeps them in a sandbox-private file store that Docker cannot read).
FLAGS=(--host-uds=create --network=host --overlay2=none)
# A second runtime for gVisor sandboxes without internet access: --network=none (loopback inside gVisor
# only). runsc refuses to checkpoint a sandbox with host networking ("checkpoint not supported when using
# hostinet"), but checkpoints one with --network=none: suspend/resume and memory snapshots (docs/gvisor.md).
NONET_NAME=${NAME}-nonet
NONET_FLAGS=(--host-uds=create --network=none --overlay2=none)
# A third for gVisor sandboxes with internet access and no egress rules: gVisor's own network stack
# (--network=sandbox), which runsc checkpoints. Its root-namespace test ("cannot run with network enabled
# in root network namespace") asks whether /proc/sys/net/core/rmem_default exists, which kernels since
# 6.x show in every network namespace; so it runs a copy of $BIN ($NETSTACK_BIN) whose test asks for
# /proc/sys/net/core/message_cost instead: the same length, and still only in the root namespace.
# --net-disconnect-ok: a checkpoint then drops the sandbox's open TCP connections (the process gets an
# error on its next use) instead of refusing ("endpoint cannot be saved in connected state").
NETSTACK_NAME=${NAME}-netstack
NETSTACK_BIN=$BIN-netstack
NETSTACK_FLAGS=(--host-uds=create --network=sandbox --net-disconnect-ok --overlay2=none)
ROOT_TEST_OLD=/proc/sys/net/core/rmem_default
ROOT_TEST_NEW=/proc/sys/net/core/message_cost

say() { printf 'gvisor: %s\n' "$*"; }
unavailable() { say "NOT AVAILABLE ($*); sandboxes run with runc"; exit 0; }

[ "$(id -u)" = 0 ] || unavailable "needs root to install $BIN and edit $DAEMON_JSON"
[ "$(uname -m)" = x86_64 ] || unavailable "only x86_64 is set up here (found $(uname -m))"
command -v docker >/dev/null || unavailable "no docker CLI"

has_host_uds() { local out; out=$("$1" flags 2>&1); grep -q -- "-host-uds" <<<"$out"; }

# ---- 1. the binary ----------------------------------------------------------------------------
if [ -x "$BIN" ] && has_host_uds "$BIN" && grep -q "^$SUITE " "$BIN.deb" 2>/dev/null; then
  say "$("$BIN" --version 2>/dev/null | head -n1) ($(cat "$BIN.deb")) already at $BIN"
else
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
  echo "deb $MIRROR $SUITE main" >"$tmp/sources.list"
  # A private apt configuration: only this suite's index, kept in $tmp; the host's apt state is untouched.
  apt_opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o Dir::State::Status=/dev/null
            -o Acquire::Languages=none -o APT::Sandbox::User=root)
  say "downloading runsc from Debian $SUITE (a static Go binary, about 7 MB)"
  apt-get "${apt_opts[@]}" update -q >"$tmp/apt.log" 2>&1 || unavailable "apt-get update of $SUITE failed: $(tail -n1 "$tmp/apt.log")"
  (cd "$tmp" && apt-get "${apt_opts[@]}" download runsc >>"$tmp/apt.log" 2>&1) \
    || unavailable "apt-get download runsc failed: $(tail -n1 "$tmp/apt.log")"
  dpkg-deb -x "$tmp"/runsc_*.deb "$tmp/x" || unavailable "could not unpack the runsc package"
  has_host_uds "$tmp/x/usr/bin/runsc" || unavailable "$SUITE's runsc has no --host-uds flag"
  install -D -m 755 "$tmp/x/usr/bin/runsc" "$BIN"
  echo "$SUITE $(basename "$tmp"/runsc_*.deb)" >"$BIN.deb"
  say "installed $("$BIN" --version | head -n1) from $(cat "$BIN.deb") at $BIN"
fi

# ---- 1b. the netstack copy (see NETSTACK_FLAGS) -------------------------------------------------
# Rewritten from $BIN on every run (a no-op when the result is the same file), so it follows $BIN.
netstack_ok=1
if [ -e "$ROOT_TEST_NEW" ] && command -v unshare >/dev/null && unshare -n sh -c "[ ! -e $ROOT_TEST_NEW ]" 2>/dev/null; then
  if out=$(python3 - "$BIN" "$NETSTACK_BIN" "$ROOT_TEST_OLD" "$ROOT_TEST_NEW" 2>&1 <<'EOF'
import os, sys
src, dst, old, new = sys.argv[1], sys.argv[2], sys.argv[3].encode(), sys.argv[4].encode()
data = open(src, "rb").read()
# isRootNetNS's path and its error message ("failed to access <path>: %v"), nothing else in this build
if len(old) != len(new) or data.count(old) != 2 or data.count(b"failed to access " + old) != 1:
    sys.exit(f"{src}: the root-namespace test's path is not where this set-up expects it")
data = data.replace(old, new)
try:
    with open(dst, "rb") as f:
        same = f.read() == data
except FileNotFoundError:
    same = False
if same:
    print("unchanged")
else:
    with open(dst + ".tmp", "wb") as f:
        f.write(data)
    os.chmod(dst + ".tmp", 0o755)
    os.replace(dst + ".tmp", dst)
    print("written")
EOF
  ); then
    say "netstack copy $NETSTACK_BIN $out (root-namespace test: $ROOT_TEST_NEW)"
  else
    netstack_ok=0; say "no netstack runtime: $out"
  fi
else
  netstack_ok=0; say "no netstack runtime: $ROOT_TEST_NEW does not tell the root network namespace apart here"
fi

# ---- 2. Docker's runtime entry ------------------------------------------------------------------
# Merged into daemon.json (other keys kept); returns 0 when the file changed.
register() {
  python3 - "$DAEMON_JSON" "$@" <<'EOF'
import json, os, sys
path, name, binary, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
try:
    with open(path) as f:
        conf = json.load(f)
except FileNotFoundError:
    conf = {}
want = {"path": binary, "runtimeArgs": args}
if conf.get("runtimes", {}).get(name) == want:
    sys.exit(1)
conf.setdefault("runtimes", {})[name] = want
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".tmp", "w") as f:
    json.dump(conf, f, indent=2)
os.replace(path + ".tmp", path)
EOF
}
unregister() {  # unregister [runtime...]: all three by default
  [ $# -gt 0 ] || set -- "$NAME" "$NONET_NAME" "$NETSTACK_NAME"
  python3 - "$DAEMON_JSON" "$@" <<'EOF'
import json, os, sys
path, names = sys.argv[1], sys.argv[2:]
with open(path) as f:
    conf = json.load(f)
for name in names:
    conf.get("runtimes", {}).pop(name, None)
with open(path + ".tmp", "w") as f:
    json.dump(conf, f, indent=2)
os.replace(path + ".tmp", path)
EOF
}
engine_runtimes() { docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}' 2>/dev/null; }
reload_dockerd() {  # reload_dockerd present|absent [the runtime to wait for]
  local pid want=${2:-$NONET_NAME}
  pid=$(cat /var/run/docker.pid 2>/dev/null || pidof dockerd | awk '{print $1}')
  [ -n "$pid" ] || return 1
  kill -HUP "$pid" || return 1
  for _ in $(seq 1 20); do
    if [ "$1" = present ]; then engine_runtimes | grep -qw -- "$want" && return 0
    else engine_runtimes | grep -qw -- "$want" || return 0; fi
    sleep 0.25
  done
  return 1
}

changed=1
register "$NAME" "$BIN" "${FLAGS[@]}" && changed=0
register "$NONET_NAME" "$BIN" "${NONET_FLAGS[@]}" && changed=0
want=$NONET_NAME
if [ "$netstack_ok" = 1 ]; then
  want=$NETSTACK_NAME
  register "$NETSTACK_NAME" "$NETSTACK_BIN" "${NETSTACK_FLAGS[@]}" && changed=0
elif engine_runtimes | grep -qw -- "$NETSTACK_NAME"; then  # from an earlier run this host no longer allows
  unregister "$NETSTACK_NAME" && reload_dockerd absent "$NETSTACK_NAME"
  say "runtime '$NETSTACK_NAME' removed from $DAEMON_JSON"
fi
if [ "$changed" = 0 ]; then
  say "registered runtimes '$NAME' ($BIN ${FLAGS[*]}), '$NONET_NAME' (${NONET_FLAGS[*]})$([ "$netstack_ok" = 1 ] && echo " and '$NETSTACK_NAME' ($NETSTACK_BIN ${NETSTACK_FLAGS[*]})") in $DAEMON_JSON"
  reload_dockerd present "$want" || unavailable "dockerd did not pick up '$NAME' after SIGHUP (is this host's dockerd ours to signal?)"
  say "dockerd reloaded with SIGHUP (running containers untouched)"
elif ! engine_runtimes | grep -qw -- "$want"; then
  reload_dockerd present "$want" || unavailable "dockerd does not list '$NAME' even after SIGHUP"
  say "dockerd reloaded with SIGHUP"
else
  say "runtime '$NAME' already registered with dockerd"
fi

# ---- 3. one tiny container proves it ------------------------------------------------------------
if ! docker image inspect "$PROBE_IMAGE" >/dev/null 2>&1; then
  say "ready (not probed: image $PROBE_IMAGE not built yet)"
  exit 0
fi
if out=$(timeout 60 docker run --rm --runtime="$NAME" --network=none --label dev.tensorlake-emulator.probe=gvisor \
           "$PROBE_IMAGE" sh -c 'cat /proc/version' 2>&1) && grep -q 'Linux version 4.4.0' <<<"$out"; then
  say "ready: a probe container ran under gVisor"
else
  say "the probe container failed under '$NAME': $(tail -n1 <<<"$out")"
  unregister && reload_dockerd absent "$NAME"
  unavailable "runsc cannot run containers on this host/kernel; runtime '$NAME' removed from $DAEMON_JSON"
fi
# gVisor's own network stack: a container on Docker's default bridge must see its interface inside (no
# traffic is sent). Where it cannot, only that runtime goes: networked gVisor sandboxes use host networking.
if [ "$netstack_ok" = 1 ]; then
  if out=$(timeout 60 docker run --rm --runtime="$NETSTACK_NAME" --label dev.tensorlake-emulator.probe=gvisor \
             "$PROBE_IMAGE" sh -c 'cat /proc/net/dev' 2>&1) && grep -q 'eth0:' <<<"$out"; then
    say "ready: a probe container ran under '$NETSTACK_NAME' with its bridge interface"
  else
    say "the probe container failed under '$NETSTACK_NAME': $(tail -n1 <<<"$out")"
    unregister "$NETSTACK_NAME" && reload_dockerd absent "$NETSTACK_NAME"
    say "runtime '$NETSTACK_NAME' removed from $DAEMON_JSON: gVisor sandboxes with internet access use host networking"
  fi
fi

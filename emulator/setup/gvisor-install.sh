#!/usr/bin/env bash
# gVisor for sandboxes (docs/gvisor.md): install a runsc that can create host unix sockets on bind
# mounts (the agent channel needs --host-uds=create; bookworm's runsc 0.0~20221219 has no such flag),
# register it with Docker as the runtime "runsc", reload dockerd with SIGHUP (never a restart: running
# containers stay untouched), and prove it with one tiny container.
#
# runsc is a static Go binary, so Debian sid's package is taken with `apt-get download` through a
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
unregister() {
  python3 - "$DAEMON_JSON" "$NAME" "$NONET_NAME" <<'EOF'
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
reload_dockerd() {
  local pid
  pid=$(cat /var/run/docker.pid 2>/dev/null || pidof dockerd | awk '{print $1}')
  [ -n "$pid" ] || return 1
  kill -HUP "$pid" || return 1
  for _ in $(seq 1 20); do
    if [ "$1" = present ]; then engine_runtimes | grep -qw -- "$NONET_NAME" && return 0
    else engine_runtimes | grep -qw "$NAME" || return 0; fi
    sleep 0.25
  done
  return 1
}

changed=1
register "$NAME" "$BIN" "${FLAGS[@]}" && changed=0
register "$NONET_NAME" "$BIN" "${NONET_FLAGS[@]}" && changed=0
if [ "$changed" = 0 ]; then
  say "registered runtimes '$NAME' ($BIN ${FLAGS[*]}) and '$NONET_NAME' (${NONET_FLAGS[*]}) in $DAEMON_JSON"
  reload_dockerd present || unavailable "dockerd did not pick up '$NAME' after SIGHUP (is this host's dockerd ours to signal?)"
  say "dockerd reloaded with SIGHUP (running containers untouched)"
elif ! engine_runtimes | grep -qw -- "$NONET_NAME"; then
  reload_dockerd present || unavailable "dockerd does not list '$NAME' even after SIGHUP"
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
  unregister && reload_dockerd absent
  unavailable "runsc cannot run containers on this host/kernel; runtime '$NAME' removed from $DAEMON_JSON"
fi

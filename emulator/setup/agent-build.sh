#!/usr/bin/env bash
# Builds the in-sandbox agent (the Go program in <repo>/agent) as ONE static executable into
# <repo>/build/agent/tle-agent, idempotently: it rebuilds only when agent/*.go or agent/go.mod changed
# (their content hash is kept next to the folder, in build/agent.source-hash). The folder holds only the
# binary and an empty run/ (the mount point of each sandbox's run folder): it is bind-mounted read-only at
# /.tle in every sandbox (emulator/backend/docker.py), so nothing is written into the sandbox's filesystem.
# Needs Go >= 1.19 (Debian bookworm's golang-go; installed with apt when missing). Prints one line.
# Usage: agent-build.sh [OUT_DIR]   (default <repo>/build/agent, or for an installed package
# /var/lib/tensorlake-emulator/agent as root, else ~/.local/share/tensorlake-emulator/agent; TLE_AGENT_DIR too)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SRC=$REPO/agent
DEFAULT_OUT=$REPO/build/agent
if [ ! -f "$SRC/go.mod" ]; then
  # An installed package (REPO is site-packages): the sources are the wheel's data files under
  # <prefix>/share, and the binary goes to the user's state (emulator/config.py _default_agent_dir agrees).
  SRC=$(cd "$REPO/../../.." && pwd)/share/tensorlake-emulator/agent
  if [ "$(id -u)" = 0 ]; then DEFAULT_OUT=/var/lib/tensorlake-emulator/agent
  else DEFAULT_OUT=$HOME/.local/share/tensorlake-emulator/agent; fi
fi
OUT=${1:-${TLE_AGENT_DIR:-$DEFAULT_OUT}}
say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] FAILED: %s\n' "$*" >&2; exit 1; }

[ -f "$SRC/go.mod" ] || die "agent: no Go source in $SRC"
want=$(cat "$SRC/go.mod" "$SRC"/*.go | sha256sum | cut -c1-16)
stamp=$OUT.source-hash
if [ -x "$OUT/tle-agent" ] && [ -d "$OUT/run" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  say "agent: $OUT/tle-agent up to date"
  exit 0
fi
if ! command -v go >/dev/null; then
  say "agent: installing golang-go (Go compiler, about 30 s)"
  sudo_prefix=""
  [ "$(id -u)" = 0 ] || sudo_prefix="sudo"
  $sudo_prefix apt-get update -q >/tmp/tle-apt-update.log 2>&1 || die "apt-get update (see /tmp/tle-apt-update.log)"
  $sudo_prefix apt-get install -y -q golang-go >/tmp/tle-apt-install.log 2>&1 \
    || die "apt-get install golang-go (see /tmp/tle-apt-install.log)"
fi
mkdir -p "$OUT/run"
tmp=$(mktemp "$OUT/.tle-agent.XXXXXX")
# Static (no libc: any image works), stripped, no host paths in it. GOFLAGS=-mod=mod: stdlib only, no downloads.
if ! (cd "$SRC" && CGO_ENABLED=0 GOFLAGS=-mod=mod GOCACHE=${GOCACHE:-/tmp/tle-go-cache} \
      go build -trimpath -ldflags='-s -w' -o "$tmp" .) >"$OUT.build.log" 2>&1; then
  rm -f "$tmp"
  die "go build of the agent (see $OUT.build.log)"
fi
chmod 0755 "$tmp"
mv -f "$tmp" "$OUT/tle-agent"
echo "$want" >"$stamp"
say "agent: built $OUT/tle-agent ($(du -k "$OUT/tle-agent" | cut -f1) KiB, $(go version | cut -d' ' -f3))"

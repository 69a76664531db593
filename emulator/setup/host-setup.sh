#!/usr/bin/env bash
# One idempotent step that brings a Debian/Ubuntu host to "ready" for the emulator:
#   1. Docker engine running with checkpoint support (--experimental)
#   2. CRIU >= 4.2 on PATH (optional: without it suspend/checkpoint answer "not supported")
#   3. the default sandbox image, built offline from Debian packages
#   3b. gVisor: runsc registered with Docker as the runtime "runsc" (optional: without it runc only)
#   4. in a source checkout only: the project's Python environment (.venv) with the pinned SDK for the tests
#   5. the in-sandbox agent: one static Go executable in build/agent (agent-build.sh; golang-go if missing)
#   6. with --for-tests only (./run test): Debian's chromium (the dashboard tests' headless browser) and gcc
#      (the musl test images)
# Every stage prints one line and skips itself when its work is already done; long ones say they are alive.
# Everything it runs ships inside the package (this folder), so an installed wheel sets a host up alone.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# A source checkout has the project file two levels up; an installed package has site-packages there.
SOURCE_CHECKOUT=0
[ -f "$REPO/pyproject.toml" ] && grep -q '^name = "tensorlake-emulator"' "$REPO/pyproject.toml" && SOURCE_CHECKOUT=1
IMAGE=${TLE_DEFAULT_IMAGE:-tensorlake-emulator/sandbox:latest}
ALIAS_IMAGE=tensorlake/ubuntu-minimal:latest
MIRROR=${TLE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
VENV=${TLE_VENV:-$REPO/.venv}
STATE=${TLE_SETUP_STATE:-/var/lib/tensorlake-emulator/setup}
DOCKERD_LOG=${TLE_DOCKERD_LOG:-/var/log/tensorlake-emulator-dockerd.log}
export DEBIAN_FRONTEND=noninteractive

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] FAILED: %s\n' "$*" >&2; exit 1; }
mkdir -p "$STATE"

# Run a long command in the background and print a line every 20 s until it ends; returns its status.
with_progress() {
  local what=$1; shift
  "$@" & local pid=$! start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ $(( (SECONDS - start) % 20 )) = 0 ] && kill -0 "$pid" 2>/dev/null; then
      say "$what: still working ($(( SECONDS - start )) s)"
    fi
  done
  wait "$pid"
}

sudo_prefix=""
[ "$(id -u)" = 0 ] || sudo_prefix="sudo"

apt_updated=0
apt_install() {
  if [ $apt_updated = 0 ]; then
    $sudo_prefix apt-get update -q >/tmp/tle-apt-update.log 2>&1 || die "apt-get update (see /tmp/tle-apt-update.log)"
    apt_updated=1
  fi
  $sudo_prefix apt-get install -y -q "$@" >/tmp/tle-apt-install.log 2>&1 || die "apt-get install $* (see /tmp/tle-apt-install.log)"
}

# ---- 1. Docker engine -------------------------------------------------------------------------
engine_answers() { timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if engine_answers; then
  say "docker: engine $(docker version --format '{{.Server.Version}}') already running, reusing it"
else
  if ! command -v dockerd >/dev/null; then
    say "docker: installing docker.io (about a minute)"
    apt_install docker.io
  fi
  say "docker: starting dockerd --experimental (log: $DOCKERD_LOG)"
  # No init system on these machines: dockerd runs detached, in its own session, so it outlives
  # this script and the shell that called it.
  setsid nohup dockerd --experimental >>"$DOCKERD_LOG" 2>&1 </dev/null &
  for _ in $(seq 1 60); do engine_answers && break; sleep 0.5; done
  engine_answers || die "dockerd did not answer within 30 s (see $DOCKERD_LOG)"
  say "docker: engine $(docker version --format '{{.Server.Version}}') answering"
fi
if [ "$(docker version --format '{{.Server.Experimental}}' 2>/dev/null)" != "true" ]; then
  say "docker: WARNING the running engine has no --experimental; docker checkpoint will be unavailable"
fi

# ---- 1b. egress rules: iptables and nsenter write each sandbox's allow/deny rules -------------
# (emulator/backend/egress.py; without them a create with a network policy answers "not supported")
if command -v iptables-restore >/dev/null && command -v ip6tables-restore >/dev/null && command -v nsenter >/dev/null; then
  say "egress: iptables and nsenter present"
else
  say "egress: installing iptables and util-linux"
  apt_install iptables util-linux
fi

# ---- 2. CRIU (in the background: its debootstrap overlaps the image's) --------------------------
# Both stages need debootstrap; install it here so two apt-gets never race for the dpkg lock.
command -v debootstrap >/dev/null || { say "debootstrap: installing"; apt_install debootstrap; }
criu_log=$STATE/criu-install.log
bash "$HERE/criu-install.sh" >"$criu_log" 2>&1 &
criu_pid=$!

# ---- 3. default sandbox image -----------------------------------------------------------------
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  say "image: $IMAGE present"
else
  rootfs=$STATE/image-rootfs
  rm -rf "$rootfs"
  say "image: debootstrap trixie minbase with python3 (about a minute)"
  with_progress image debootstrap --variant=minbase --include=python3,python-is-python3,procps,coreutils,ca-certificates \
    trixie "$rootfs" "$MIRROR" >"$STATE/image-debootstrap.log" 2>&1 \
    || die "debootstrap of the sandbox image (see $STATE/image-debootstrap.log)"
  mkdir -p "$rootfs/workspace"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  say "image: importing into docker as $IMAGE"
  tar -C "$rootfs" -c . | docker import \
      --change 'WORKDIR /workspace' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/sh"]' --change 'LABEL dev.tensorlake-emulator.image=default' \
      - "$IMAGE" >/dev/null || die "docker import"
  rm -rf "$rootfs"
fi
if [ "$(docker image inspect -f '{{.Id}}' "$ALIAS_IMAGE" 2>/dev/null)" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
  docker tag "$IMAGE" "$ALIAS_IMAGE" && say "image: tagged as $ALIAS_IMAGE"
else
  say "image: $ALIAS_IMAGE present"
fi

# ---- 3b. gVisor (optional; says why when it cannot and the emulator carries on with runc) -------
if [ "${TLE_SETUP_GVISOR:-1}" = 0 ]; then
  say "gvisor: skipped (TLE_SETUP_GVISOR=0)"
else
  bash "$HERE/gvisor-install.sh" "$IMAGE" 2>&1 | sed 's/^/[setup] /'
fi

# ---- 4. Python environment (a source checkout only) ------------------------------------------
stamp=$VENV/.tle-installed
want=$(sha256sum <"$REPO/pyproject.toml" 2>/dev/null | cut -c1-16)
if [ $SOURCE_CHECKOUT = 0 ]; then
  say "python: running from the installed package in $REPO; nothing to install"
elif [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/tensorlake-emulator" ]; then
  say "python: $VENV up to date"
else
  say "python: installing the project and its test dependencies into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || die "python3 -m venv"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[test]" >"$STATE/pip.log" 2>&1 \
    || die "pip install (see $STATE/pip.log)"
  echo "$want" >"$stamp"
  say "python: ready"
fi

# ---- 5. the in-sandbox agent -------------------------------------------------------------------
bash "$HERE/agent-build.sh" || die "agent build"

# ---- 6. test-only tools (--for-tests, what ./run test passes) ---------------------------------
if [ "${1:-}" = "--for-tests" ]; then
  if command -v chromium >/dev/null 2>&1; then
    say "chromium: present (dashboard tests)"
  else
    say "chromium: installing Debian's package for the dashboard tests (tests/test_ui.py)"
    with_progress "chromium" apt_install --no-install-recommends chromium
    say "chromium: ready"
  fi
  if command -v gcc >/dev/null 2>&1; then
    say "gcc: present (musl test images)"
  else
    say "gcc: installing Debian's package to build the musl test images (tests/images_offline.py)"
    with_progress "gcc" apt_install --no-install-recommends gcc
    say "gcc: ready"
  fi
fi

# ---- 2b. wait for CRIU ------------------------------------------------------------------------
start=$SECONDS
while kill -0 $criu_pid 2>/dev/null; do
  sleep 1
  [ $(( (SECONDS - start) % 20 )) = 0 ] && say "criu: still installing ($(( SECONDS - start )) s, log: $criu_log)"
done
if wait $criu_pid; then
  say "$(tail -n1 "$criu_log")"
else
  say "criu: NOT AVAILABLE ($(tail -n1 "$criu_log")); suspend/resume and memory checkpoints will answer 'not supported on this host'"
fi
say "ready"

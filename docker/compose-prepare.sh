#!/usr/bin/env bash
# Everything `docker compose up` needs on this host, idempotent (a second run takes about a second):
#   1. Docker Compose v2 (`docker compose`): when missing on a Debian/Ubuntu host, Debian trixie's
#      docker-compose package (the v2 CLI plugin, needs only libc6 >= 2.34: bookworm's 2.36 is enough) is
#      installed with apt, from a private package list, so the host's apt sources are left as they are.
#   2. the wheels the emulator image installs offline (docker/fetch-wheels.sh; PyPI, on the host).
#   2b. the in-sandbox agent binary in build/agent (emulator/setup/agent-build.sh): the repository is mounted
#      into the emulator's container at the same path, and the host's engine mounts that folder into sandboxes.
#   3. the env file compose reads (default: .env at the repository root); keys already there are kept:
#      - TLE_API_KEY, a random key, when none is set;
#      - COMPOSE_FILE, the compose files for THIS host (rewritten on every run):
#          docker-compose.yml                       always;
#          + docker/compose.unprivileged.yml        when the engine cannot start a privileged container
#                                                   ("unable to apply caps": a host that is itself a container);
#          + docker/compose.loopback.yml            with --loopback (containers may only talk over loopback);
#      - with --loopback, TLE_API_PORT / TLE_PROXY_PORT: the emulator then listens on the host's own
#        127.0.0.1, so a taken 8900 / 9443 (an emulator of `./run start`) is replaced by a free port, said here.
# Usage, from anywhere:  docker/compose-prepare.sh [--loopback] [--env-file FILE]
# Then, from the repository root:  docker compose up -d --wait --build emulator  (add --env-file FILE if given here)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BASE=${TLE_BASE_IMAGE:-tensorlake-emulator/sandbox:latest}
ENV_FILE=$REPO/.env
LOOPBACK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --loopback) LOOPBACK=1 ;;
    --env-file) ENV_FILE=$2; shift ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
  esac
  shift
done
say() { printf '[compose] %s\n' "$*"; }
die() { printf '[compose] FAILED: %s\n' "$*" >&2; exit 1; }
sudo_prefix=""
[ "$(id -u)" = 0 ] || sudo_prefix="sudo"

# ---- 1. docker compose v2 -------------------------------------------------------------------
install_compose() {
  command -v apt-get >/dev/null || die "docker compose is not installed: install Docker Compose v2 (the CLI plugin)"
  local dir
  dir=$(mktemp -d /tmp/tle-compose-apt.XXXXXX)
  # A private list of trixie's packages: apt reads no other source, and the host's state is not touched.
  echo "deb ${TLE_DEBIAN_MIRROR:-http://deb.debian.org/debian} trixie main" >"$dir/sources.list"
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
  chmod 755 "$dir"
  local opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent
              -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -q)
  say "installing Docker Compose v2 (Debian trixie's docker-compose package, about 15 s)"
  if ! { apt-get "${opts[@]}" update && (cd "$dir" && apt-get "${opts[@]}" download docker-compose); } \
      >"$dir/log" 2>&1; then
    die "could not download trixie's docker-compose (see $dir/log)"
  fi
  # Installed from the file against the host's own lists: apt checks its libc6 dependency here.
  $sudo_prefix apt-get install -y -q "$dir"/docker-compose_*.deb >>"$dir/log" 2>&1 \
    || die "apt-get install of trixie's docker-compose (see $dir/log)"
  rm -rf "$dir"
}
if docker compose version >/dev/null 2>&1; then
  say "$(docker compose version) present"
else
  install_compose
  docker compose version >/dev/null 2>&1 || die "docker compose still missing after the install"
  say "$(docker compose version) installed"
fi

# ---- 2. wheels for the image ------------------------------------------------------------------
if ls "$HERE"/wheels/pip-*.whl >/dev/null 2>&1 && [ "$HERE/wheels/.requirements" -nt "$HERE/requirements.txt" ]; then
  say "wheels: docker/wheels up to date"
else
  bash "$HERE/fetch-wheels.sh" | sed 's/^/[compose] /'
  touch "$HERE/wheels/.requirements"
fi

# ---- 2b. the in-sandbox agent ------------------------------------------------------------------
bash "$REPO/emulator/setup/agent-build.sh" "$REPO/build/agent" | sed 's/^\[setup\] /[compose] /'

# ---- 3. the env file --------------------------------------------------------------------------
touch "$ENV_FILE"
get() { sed -n "s/^$1=//p" "$ENV_FILE" | tail -n1; }
put() { # KEY VALUE: replace or append
  local tmp="$ENV_FILE.tmp.$$"
  grep -v "^$1=" "$ENV_FILE" >"$tmp" || true
  printf '%s=%s\n' "$1" "$2" >>"$tmp"
  cat "$tmp" >"$ENV_FILE" && rm -f "$tmp"
}
if [ -z "$(get TLE_API_KEY)" ]; then
  put TLE_API_KEY "$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  say "env: TLE_API_KEY generated into $ENV_FILE (clients send it as TENSORLAKE_API_KEY)"
fi

files=docker-compose.yml
if docker run --rm --privileged --network none --label dev.tensorlake-emulator.compose-probe=1 \
     --entrypoint true "$BASE" >/dev/null 2>"${TMPDIR:-/tmp}/tle-compose-probe.$$"; then
  say "host: privileged containers start: docker-compose.yml as it is (memory checkpoints available)"
elif grep -q "apply caps" "${TMPDIR:-/tmp}/tle-compose-probe.$$"; then
  files+=:docker/compose.unprivileged.yml
  say "host: privileged containers fail ('unable to apply caps': this host is itself a container):" \
      "adding docker/compose.unprivileged.yml (suspend and memory checkpoints will answer 'not supported')"
else
  cat "${TMPDIR:-/tmp}/tle-compose-probe.$$" >&2; rm -f "${TMPDIR:-/tmp}/tle-compose-probe.$$"
  die "could not start a probe container from $BASE (run tensorlake-emulator setup first)"
fi
rm -f "${TMPDIR:-/tmp}/tle-compose-probe.$$"

taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
if [ $LOOPBACK = 1 ]; then
  files+=:docker/compose.loopback.yml
  for pair in TLE_API_PORT:8900 TLE_PROXY_PORT:9443; do
    key=${pair%%:*} port=$(get "${pair%%:*}")
    if [ -n "$port" ]; then
      # A port chosen earlier (or by the user) stays, unless something else now holds it and no
      # compose emulator of this env file is the holder: then it is a clash, said here and not as "unhealthy".
      if taken "$port" && ! (cd "$REPO" && docker compose --env-file "$ENV_FILE" ps -q emulator 2>/dev/null | grep -q .); then
        die "$key=$port in $ENV_FILE is in use on 127.0.0.1 by another program: remove that line to pick a free port"
      fi
    else
      port=${pair#*:}
      if taken "$port"; then
        port=$(free_port)
        say "env: 127.0.0.1:${pair#*:} is taken (another emulator?): $key=$port instead"
      fi
      put "$key" "$port"
    fi
  done
  say "env: loopback: lifecycle API http://emulator:$(get TLE_API_PORT), proxy http://emulator:$(get TLE_PROXY_PORT)"
fi
put COMPOSE_FILE "$files"
say "env: COMPOSE_FILE=$files in $ENV_FILE"
say "ready: from $REPO run: docker compose$([ "$ENV_FILE" = "$REPO/.env" ] || echo " --env-file $ENV_FILE") up -d --wait --build emulator"

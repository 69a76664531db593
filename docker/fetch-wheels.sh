#!/usr/bin/env bash
# Download, on the host, the wheels the emulator image needs, for the Python of its base image.
#
# The image is built FROM tensorlake-emulator/sandbox:latest (made offline by `tensorlake-emulator setup`),
# which has python3 and venv but no pip, and a docker build may have no route to a package index. So pip
# runs here, with the host's own index configuration, and the build installs from docker/wheels offline.
# Idempotent: pip skips wheels that are already there.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE=${TLE_BASE_IMAGE:-tensorlake-emulator/sandbox:latest}
PIP=${PIP:-$HERE/../.venv/bin/pip}
[ -x "$PIP" ] || PIP="python3 -m pip"
PYVER=$(docker run --rm --network none --entrypoint python3 "$BASE" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
ARCH=$(uname -m)
echo "[wheels] base image $BASE has Python $PYVER ($ARCH); downloading into $HERE/wheels"
mkdir -p "$HERE/wheels"
# shellcheck disable=SC2086
$PIP download --quiet --dest "$HERE/wheels" --only-binary=:all: --python-version "$PYVER" \
  --platform "manylinux_2_28_$ARCH" --platform "manylinux_2_17_$ARCH" --platform "manylinux2014_$ARCH" \
  --platform "linux_$ARCH" -r "$HERE/requirements.txt" pip
echo "[wheels] $(ls "$HERE/wheels" | wc -l) wheels ready"

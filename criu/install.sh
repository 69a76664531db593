#!/usr/bin/env bash
# The CRIU installer ships inside the package (emulator/setup/criu-install.sh), so an installed wheel's
# `tensorlake-emulator setup` has it too; this path is kept for the README and old habits.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../emulator/setup/criu-install.sh" "$@"

"""`python -m emulator.cli`: the same as the `tensorlake-emulator` command."""

import os

from emulator.cli import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
main()

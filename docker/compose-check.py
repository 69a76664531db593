"""The check docker-compose.yml's `check` service runs: the real SDK, aimed by environment only, creates a
sandbox through the emulator's compose-network name, runs a command in it and terminates it."""

from __future__ import annotations

import os
import sys

from tensorlake.sandbox import Sandbox

print(f"[check] TENSORLAKE_API_URL={os.environ.get('TENSORLAKE_API_URL')} "
      f"TENSORLAKE_SANDBOX_API_URL={os.environ.get('TENSORLAKE_SANDBOX_API_URL')}", flush=True)
sandbox = Sandbox.create(request_timeout=60)
try:
    result = sandbox.run("echo", ["hello from a compose sandbox"])
    print(f"[check] sandbox {sandbox.sandbox_id}: exit {result.exit_code}, stdout {result.stdout.strip()!r}",
          flush=True)
    ok = result.exit_code == 0 and result.stdout.strip() == "hello from a compose sandbox"
finally:
    sandbox.terminate()
print("[check] OK" if ok else "[check] FAILED", flush=True)
sys.exit(0 if ok else 1)

"""What the checkpoint tests share (tests/test_checkpoints.py, tests/test_checkpoints_restart.py): timeouts,
the counter and writer workloads, and small helpers over the SDK and Docker."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tensorlake.sandbox import Sandbox

from emulator.server import instance_label

T = 60.0  # request_timeout of creates and connects
W = 60.0  # timeout of suspend / resume / checkpoint


# A counter that proves continuity: it prints consecutive numbers and a token drawn once at start,
# holds that token (and 20 MB) in memory, and appends each number to a file.
COUNTER = """
import os, sys, time
token = os.urandom(8).hex()
blob = bytearray(20 * 1024 * 1024)
i = 0
f = open('/tmp/counter.txt', 'a')
while True:
    i += 1
    print(f'{token} {i}', flush=True)
    f.write(f'{i}\\n'); f.flush()
    time.sleep(0.05)
"""

# A writer that appends fixed-size records as fast as it can: a checkpoint lands mid-stream.
WRITER = """
import os
fd = os.open('/tmp/stream.txt', os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
i = 0
while True:
    i += 1
    os.write(fd, b'%09d\\n' % i)
"""


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _http(method: str, url: str) -> tuple[int, object]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _container_running(sandbox_id: str) -> bool | None:
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", f"tle-{sandbox_id}"],
                         capture_output=True, text=True)
    return None if out.returncode else out.stdout.strip() == "true"


def _counter_lines(sb: Sandbox, pid: int) -> list[tuple[str, int]]:
    lines = [ln.split() for ln in sb.get_stdout(pid).lines if ln.strip()]
    return [(tok, int(n)) for tok, n in lines]


def _assert_contiguous(values: list[tuple[str, int]]) -> None:
    assert values, "no output"
    tokens = {t for t, _ in values}
    assert len(tokens) == 1, f"the counter restarted (tokens {tokens})"
    nums = [n for _, n in values]
    assert nums == list(range(1, len(nums) + 1)), "the counter skipped or repeated numbers"


def _wait_more(sb: Sandbox, pid: int, than: int, timeout: float = 10.0) -> list[tuple[str, int]]:
    deadline = time.monotonic() + timeout
    while True:
        vals = _counter_lines(sb, pid)
        if vals and vals[-1][1] > than:
            return vals
        if time.monotonic() > deadline:
            raise AssertionError(f"the counter did not advance past {than}: {vals[-3:]}")
        time.sleep(0.1)


def _status(api_url: str, ident: str) -> dict:
    code, body = _http("GET", f"{api_url}/v1/namespaces/default/sandboxes/{ident}")
    assert code == 200, body
    return body  # type: ignore[return-value]


def _cleanup(data_dir: Path) -> None:
    """What a test's own emulator left (snapshot images of a failed run): by its label only."""
    label = f"dev.tensorlake-emulator.instance={instance_label(data_dir)}"
    ids = subprocess.run(["docker", "images", "-q", "--filter", f"label={label}"], capture_output=True,
                         text=True).stdout.split()
    for image in dict.fromkeys(ids):
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
    shutil.rmtree(data_dir, ignore_errors=True)

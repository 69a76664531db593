"""What the CLI's commands share: printing, the emulator's URL and HTTP calls to it (httpx)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from emulator.config import Settings, client_auth_headers
from emulator.labels import instance_label


def say(msg: str) -> None:
    print(msg, flush=True)


def fail(msg: str) -> int:
    """Print one line to stderr, prefixed `error:`; returns the exit status 1."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return 1


def emulator_url(args: argparse.Namespace) -> str:
    """--url, else TLE_EMULATOR_URL, else http://localhost:<TLE_API_PORT>, without a trailing slash."""
    if getattr(args, "url", None):
        return str(args.url).rstrip("/")
    if os.environ.get("TLE_EMULATOR_URL"):
        return os.environ["TLE_EMULATOR_URL"].rstrip("/")
    return f"http://localhost:{Settings.from_env().api_port}"


def get_json(url: str, timeout: float = 5.0) -> Any:
    """GET url and decode its JSON. Raises httpx.HTTPError (incl. status >= 400) or ValueError."""
    r = httpx.get(url, timeout=timeout, headers=client_auth_headers())
    r.raise_for_status()
    return r.json()


def answers(url: str, timeout: float = 2.0) -> bool:
    """True when an emulator's lifecycle API answers /healthz at url."""
    try:
        return httpx.get(f"{url}/healthz", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def http_reason(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return str(exc) or type(exc).__name__


def instance_of(settings: Settings, data_dir: str | None) -> tuple[str, Path]:
    """(instance label, data folder) for --data-dir or the configured TLE_DATA_DIR."""
    path = Path(data_dir) if data_dir else settings.data_dir
    return instance_label(path), path

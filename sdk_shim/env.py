"""Environment for the SDK (docs/protocol.md §2), read once at import: set it before `import tensorlake`."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from urllib.parse import urlparse


def emulator_env(api_url: str = "http://localhost:8900", namespace: str | None = None) -> dict[str, str]:
    env = {"TENSORLAKE_API_URL": api_url}
    host = urlparse(api_url).hostname
    if host not in ("localhost", "127.0.0.1"):
        # Only localhost counts as local mode; any other host name needs the flat lifecycle paths.
        env["TENSORLAKE_SANDBOX_API_URL"] = api_url
    if namespace:
        env["INDEXIFY_NAMESPACE"] = namespace
    return env


def use_emulator(api_url: str = "http://localhost:8900", namespace: str | None = None) -> dict[str, str]:
    """Set the SDK's environment for an emulator at api_url. Warns if the SDK was already imported."""
    env = emulator_env(api_url, namespace)
    os.environ.update(env)
    if "tensorlake.sandbox._defaults" in sys.modules:
        import warnings

        warnings.warn("tensorlake was imported before use_emulator(); its defaults were read already. Pass "
                      "api_url= explicitly or call use_emulator() first.", stacklevel=2)
    return env


@contextlib.contextmanager
def emulator(api_url: str = "http://localhost:8900", namespace: str | None = None) -> Iterator[dict[str, str]]:
    saved = {k: os.environ.get(k) for k in ("TENSORLAKE_API_URL", "TENSORLAKE_SANDBOX_API_URL", "INDEXIFY_NAMESPACE")}
    try:
        yield use_emulator(api_url, namespace)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

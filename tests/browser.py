"""A headless Chromium (Debian's `chromium` package) driven over the DevTools protocol, for the dashboard
tests: load a page, evaluate script in it, take screenshots. The `websockets` library the project already
uses carries the protocol; no browser is downloaded.

Chromium is kept off the network beyond loopback: no background services, and every host name but
localhost resolves to nothing, so the tests make no DNS lookups and reach nothing outside.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-default-apps", "--disable-sync",
    "--disable-extensions", "--disable-domain-reliability", "--no-pings", "--metrics-recording-only",
    "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--window-size=1400,1000",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One Chromium process and its first page. Use as a context manager; `close()` ends the process."""

    def __init__(self) -> None:
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium is not installed (emulator/setup/host-setup.sh --browser installs it)")
        self._profile = Path(tempfile.mkdtemp(prefix="tle-chromium-"))
        self._proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            page = next(t for t in json.loads(resp.read()) if t["type"] == "page")
        self._stack = contextlib.ExitStack()
        self._ws = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=64 << 20,
                                                     open_timeout=10))
        self._ids = itertools.count(1)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result. Events that arrive meanwhile are dropped."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def goto(self, url: str) -> None:
        self.send("Page.enable")
        self.send("Page.navigate", url=url)

    def eval(self, expression: str) -> Any:
        """The value of a script expression in the page (a promise is awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> None:
        """Poll until a script expression is truthy (in JavaScript's sense). AssertionError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.eval(f"Boolean({expression})")
            except RuntimeError:  # the page is still loading (no document yet, say)
                value = None
            if value:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"never true in the page: {expression}")
            time.sleep(0.2)

    def screenshot(self, path: Path, width: int = 1400, height: int = 1000) -> None:
        """A PNG of the whole page (at least width x height) written to `path`."""
        full = self.eval(f"Math.max(document.documentElement.scrollHeight, {height})")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=int(full), deviceScaleFactor=1,
                  mobile=False)
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        stack = getattr(self, "_stack", None)
        if stack is not None:
            stack.close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

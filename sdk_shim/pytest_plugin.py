"""pytest plugin `tensorlake_emulator`: hermetic tests for code that uses the tensorlake SDK.

Installed with the project (entry point `pytest11`), so there is nothing to register. Fixtures:

- `tensorlake_emulator` (session): an emulator for this test session. It reuses the one at
  `TLE_EMULATOR_URL` (or `--tensorlake-emulator-url`) when that answers `/healthz`; otherwise it starts
  one as a subprocess on free ports with its own data folder. Every sandbox and snapshot the session
  makes carries the session's label, and all of them are removed when the session ends.
- `tensorlake_sandbox` (function): a running `tensorlake.sandbox.Sandbox`, always terminated afterwards.
- `async_tensorlake_sandbox` (function): the same as an `AsyncSandbox` (needs pytest-asyncio).
- `tensorlake_control` (function): an `sdk_shim.control.EmulatorControl` for the session's emulator:
  `reset(...)`, `reset_session()`, `advance_clock(seconds)`, `clock()`, `requests(...)`, `metrics()`
  (docs/controls.md).
- `tensorlake_clean` (function): the same control, and after the test every sandbox and snapshot the
  session made is terminated and deleted (`reset_session()`), so the next test starts from nothing.

`@pytest.mark.tensorlake_sandbox(image=..., cpus=..., memory_mb=..., ...)` passes arguments to the
sandbox fixtures' `create`.

The plugin is inert until one of its fixtures is requested: nothing starts, nothing is swept. The one
thing it does up front, in `pytest_configure`, is aim the SDK's environment (`TENSORLAKE_API_URL`,
read once when `tensorlake` is imported) at the port the session's emulator will use, so code under
test that calls `Sandbox.create()` without `api_url=` reaches it too. It leaves a `TENSORLAKE_API_URL`
that was set by someone else alone; `-p no:tensorlake_emulator` or the ini option
`tensorlake_emulator_env = false` turn that off.

Killed sessions: each session holds a lock on a small record under the sessions folder
(`TLE_SESSIONS_DIR`, default `~/.local/state/tensorlake-emulator/sessions`); the next session that
starts an emulator reaps every record whose lock is free (see sdk_shim/sessions.py).

pytest-xdist: every worker is its own session, with its own ports, data folder and label.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sdk_shim.launcher import EmulatorProcess, api_healthy, free_port, process_start_time

log = logging.getLogger("tensorlake_emulator")

# The SDK URL this plugin set, so an xdist worker can tell it from one a user chose (and re-aim it).
_MARK = "TLE_PYTEST_SDK_URL"
_PLAN = pytest.StashKey["_Plan"]()


@dataclass
class _Plan:
    api_port: int
    proxy_port: int
    worker: str | None


@dataclass
class TensorlakeEmulator:
    """What the `tensorlake_emulator` fixture gives a test."""

    api_url: str  # where the SDK should send lifecycle calls (always a localhost URL)
    session_label: str
    namespace: str = "default"
    mode: str = "started"  # "started" (own subprocess) or "reused" (TLE_EMULATOR_URL)
    target_url: str = ""  # the emulator itself (differs from api_url when reused through the forwarder)
    request_timeout: float = 60.0
    process: EmulatorProcess | None = None
    data_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """The SDK environment for a subprocess that should use this emulator."""
        from sdk_shim.env import emulator_env

        return emulator_env(self.api_url, self.namespace)

    @property
    def control(self) -> Any:
        """An `sdk_shim.control.EmulatorControl` for this emulator, scoped to this session's label."""
        from sdk_shim.control import EmulatorControl

        return EmulatorControl(self.target_url or self.api_url, self.session_label, self.request_timeout)

    def sdk_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Arguments for `Sandbox.create`/`connect` that aim them here, with a short request timeout."""
        kwargs: dict[str, Any] = {"api_url": self.api_url, "namespace": self.namespace,
                                  "request_timeout": self.request_timeout}
        kwargs.update(overrides)
        return kwargs


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tensorlake_emulator", "tensorlake emulator")
    group.addoption("--tensorlake-emulator-url", default=None,
                    help="reuse the emulator at this URL when it answers (default: env TLE_EMULATOR_URL)")
    parser.addini("tensorlake_emulator_env", type="bool", default=True,
                  help="aim TENSORLAKE_API_URL at the session's emulator in pytest_configure (default true)")
    parser.addini("tensorlake_emulator_request_timeout", default="60",
                  help="request_timeout (s) the sandbox fixtures pass to the SDK (default 60)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tensorlake_sandbox(**kwargs): arguments for the sandbox fixtures' create")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    plan = _Plan(api_port=free_port(), proxy_port=free_port(), worker=worker)
    config.stash[_PLAN] = plan
    if not config.getini("tensorlake_emulator_env"):
        return
    current = os.environ.get("TENSORLAKE_API_URL")
    if current and current != os.environ.get(_MARK):
        return  # chosen by the user or a conftest: theirs to keep
    url = f"http://localhost:{plan.api_port}"
    os.environ["TENSORLAKE_API_URL"] = url
    os.environ[_MARK] = url
    os.environ.pop("TENSORLAKE_SANDBOX_API_URL", None)  # flat paths would bypass the localhost URL above


def _target_url(config: pytest.Config) -> str | None:
    return config.getoption("--tensorlake-emulator-url") or os.environ.get("TLE_EMULATOR_URL") or None


def _warn(msg: str) -> None:
    log.warning("%s", msg)


def _info(msg: str) -> None:
    log.info("%s", msg)


@pytest.fixture(scope="session")
def tensorlake_emulator(request: pytest.FixtureRequest) -> Iterator[TensorlakeEmulator]:
    from sdk_shim import sessions

    config = request.config
    plan = config.stash[_PLAN]
    with contextlib.suppress(Exception):  # a failed reap must not fail the new session
        sessions.reap_dead_sessions(progress=_warn)
    session = sessions.Session(sessions.new_label(plan.worker))
    namespace = os.environ.get("INDEXIFY_NAMESPACE") or "default"
    timeout = float(config.getini("tensorlake_emulator_request_timeout"))
    target = _target_url(config)
    forwarder = None
    proc: EmulatorProcess | None = None
    try:
        if target and api_healthy(target.rstrip("/"), 3.0):
            from sdk_shim.forwarder import Forwarder

            def record(kind: str, ns: str, ident: str) -> None:
                (session.add_sandbox if kind == "sandbox" else session.add_snapshot)(ns, ident)

            session.update(mode="reused", api_url=target.rstrip("/"),
                           docker_host=os.environ.get("TLE_DOCKER_HOST"))
            forwarder = Forwarder(target.rstrip("/"), session.label, plan.api_port, record).start()
            emu = TensorlakeEmulator(api_url=forwarder.url, session_label=session.label, namespace=namespace,
                                     mode="reused", target_url=target.rstrip("/"), request_timeout=timeout)
        else:
            if target:
                _warn(f"[tensorlake-emulator] nothing answers at {target}; starting an emulator for this session")
            data_dir = Path(tempfile.mkdtemp(prefix=f"tle-pytest-{plan.worker or 'main'}-"))
            (data_dir / sessions.DATA_DIR_MARKER).write_text(session.label + "\n")
            proc = EmulatorProcess(data_dir=data_dir, api_port=plan.api_port, proxy_port=plan.proxy_port,
                                   session_label=session.label, die_with_parent=True)
            session.update(mode="started", api_url=proc.api_url, data_dir=str(data_dir),
                           docker_host=os.environ.get("TLE_DOCKER_HOST"))
            proc.spawn()  # recorded before the wait, so a session killed during start-up is reaped fully
            session.update(emulator_pid=proc.pid, emulator_start=process_start_time(proc.pid or 0))
            proc.wait_ready()
            emu = TensorlakeEmulator(api_url=proc.api_url, session_label=session.label, namespace=namespace,
                                     mode="started", target_url=proc.api_url, request_timeout=timeout,
                                     process=proc, data_dir=data_dir)
        yield emu
    finally:
        if forwarder is not None:
            forwarder.stop()
        if proc is not None:
            proc.stop()
        # Everything the session made goes: terminate what is left, delete its snapshots, remove its folder.
        sessions.reap(session.record, progress=_info)
        session.close()


@pytest.fixture
def tensorlake_control(tensorlake_emulator: TensorlakeEmulator) -> Any:
    """The emulator's test controls (reset, clock, request log, metrics) for the session's emulator."""
    return tensorlake_emulator.control


@pytest.fixture
def tensorlake_clean(tensorlake_emulator: TensorlakeEmulator) -> Iterator[Any]:
    """The controls, and a reset of everything this session made once the test ends."""
    control = tensorlake_emulator.control
    yield control
    try:
        report = control.reset_session()
        if report["terminated"] or report["snapshots"]:
            _info(f"[tensorlake-emulator] reset after the test: {len(report['terminated'])} sandbox(es) "
                  f"terminated, {len(report['snapshots'])} snapshot(s) deleted")
    except Exception as exc:  # the session's own clean-up still covers what is left
        _warn(f"[tensorlake-emulator] reset after the test failed: {exc}")


def _create_kwargs(emu: TensorlakeEmulator, request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("tensorlake_sandbox")
    return emu.sdk_kwargs(**(marker.kwargs if marker else {}))


@pytest.fixture
def tensorlake_sandbox(tensorlake_emulator: TensorlakeEmulator, request: pytest.FixtureRequest) -> Iterator[Any]:
    from tensorlake.sandbox import Sandbox

    sandbox = Sandbox.create(**_create_kwargs(tensorlake_emulator, request))
    try:
        yield sandbox
    finally:
        try:
            sandbox.terminate()
        except Exception as exc:  # already gone, or the emulator is down: the session reaper still covers it
            log.warning("could not terminate sandbox %s: %s", getattr(sandbox, "sandbox_id", "?"), exc)
        with contextlib.suppress(Exception):
            sandbox.close()


async def _async_sandbox(tensorlake_emulator: TensorlakeEmulator, request: pytest.FixtureRequest
                         ) -> AsyncIterator[Any]:
    from tensorlake.sandbox import AsyncSandbox

    sandbox = await AsyncSandbox.create(**_create_kwargs(tensorlake_emulator, request))
    try:
        yield sandbox
    finally:
        try:
            await sandbox.terminate()
        except Exception as exc:
            log.warning("could not terminate sandbox %s: %s", getattr(sandbox, "sandbox_id", "?"), exc)
        with contextlib.suppress(Exception):
            await sandbox.close()


try:
    import pytest_asyncio

    async_tensorlake_sandbox = pytest_asyncio.fixture(_async_sandbox, name="async_tensorlake_sandbox")
except ImportError:  # without pytest-asyncio an async fixture cannot run; say so when it is requested

    @pytest.fixture(name="async_tensorlake_sandbox")
    def _no_async_sandbox() -> None:
        pytest.skip("async_tensorlake_sandbox needs pytest-asyncio (pip install pytest-asyncio)")

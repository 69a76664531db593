"""pytest plugin `tensorlake_emulator`: hermetic tests for code that uses the tensorlake SDK.

Installed with the project (entry point `pytest11`), so there is nothing to register. Fixtures:

- `tensorlake_emulator` (session): an emulator for this test session. It reuses the one at
  `TLE_EMULATOR_URL` (or `--tensorlake-emulator-url`, or an exported `TENSORLAKE_API_URL`) when that
  answers `/healthz`; otherwise it starts one as a subprocess on free ports with its own data folder.
  Every sandbox and snapshot the session makes carries the session's label, and all of them are
  removed when the session ends. When the session failed, the started emulator's log is kept (the
  terminal summary says where).
- `tensorlake_sandbox` (function): a running `tensorlake.sandbox.Sandbox`, always terminated afterwards.
- `async_tensorlake_sandbox` (function): the same as an `AsyncSandbox` (needs pytest-asyncio).
- `tensorlake_control` (function): an `sdk_shim.control.EmulatorControl` for the session's emulator:
  `reset(...)`, `reset_session()`, `advance_clock(seconds)`, `clock()`, `requests(...)`, `metrics()`
  (docs/controls.md).
- `tensorlake_clean` (function): the same control, and after the test every sandbox and snapshot the
  session made is terminated and deleted (`reset_session()`), so the next test starts from nothing.
- `tensorlake_faults` (function): `inject(kind, **params)` puts a fault in force (a create that stays
  pending or fails, no capacity, a failing or slow suspend/resume/checkpoint, proxy errors and cut
  streams, an OOM kill), scoped to the session; removed after the test.

`@pytest.mark.tensorlake_sandbox(image=..., cpus=..., memory_mb=..., ...)` passes arguments to the
sandbox fixtures' `create`.

The plugin is inert until one of its fixtures is requested: nothing starts, nothing is swept. The one
thing it does up front, in `pytest_configure`, is aim the SDK's environment (`TENSORLAKE_API_URL`,
read once when `tensorlake` is imported) at the port the session's emulator will use, so code under
test that calls `Sandbox.create()` without `api_url=` reaches it too. A `TENSORLAKE_API_URL` the user
exported is kept when nothing answers there; when an emulator answers, the session reuses it and
aims the SDK at its labelling forwarder (started at once), so fixtures and the code under test reach
the same emulator and the session's cleanup covers both. `-p no:tensorlake_emulator` or the ini
option `tensorlake_emulator_env = false` turn that off.

Killed sessions: each session holds a lock on a small record under the sessions folder
(`TLE_SESSIONS_DIR`, default `~/.local/state/tensorlake-emulator/sessions`); the next session that
starts an emulator reaps every record whose lock is free (see sdk_shim/sessions.py).

pytest-xdist: every worker is its own session, with its own ports, data folder and label.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
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
# The running emulator a user's exported TENSORLAKE_API_URL named, handed to xdist workers.
_TARGET = "TLE_PYTEST_TARGET"
_PLAN = pytest.StashKey["_Plan"]()
_REUSE = pytest.StashKey["_Open | None"]()
_FAILED = pytest.StashKey[bool]()
_KEPT_LOG = pytest.StashKey[str]()


@dataclass
class _Plan:
    api_port: int
    proxy_port: int
    worker: str | None


@dataclass
class _Open:
    """The test session's hold on an emulator: its record, and the forwarder or the subprocess it runs."""

    session: Any  # sessions.Session (imported lazily: the plugin stays cheap until a fixture is used)
    target: str
    forwarder: Any = None  # forwarder.Forwarder in reuse mode
    process: EmulatorProcess | None = None
    failed: bool = False


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
                    help="reuse the emulator at this URL when it answers (default: env TLE_EMULATOR_URL, else an "
                         "exported TENSORLAKE_API_URL that answers)")
    parser.addini("tensorlake_emulator_env", type="bool", default=True,
                  help="aim TENSORLAKE_API_URL at the session's emulator in pytest_configure (default true)")
    parser.addini("tensorlake_emulator_request_timeout", default="60",
                  help="request_timeout (s) the sandbox fixtures pass to the SDK (default 60)")


def _is_xdist_controller(config: pytest.Config) -> bool:
    return not os.environ.get("PYTEST_XDIST_WORKER") and bool(getattr(config.option, "numprocesses", None))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tensorlake_sandbox(**kwargs): arguments for the sandbox fixtures' create")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    plan = _Plan(api_port=free_port(), proxy_port=free_port(), worker=worker)
    config.stash[_PLAN] = plan
    if not config.getini("tensorlake_emulator_env"):
        return
    current = os.environ.get("TENSORLAKE_API_URL")
    if current and current != os.environ.get(_MARK):
        # Exported by the user (`./run start` says to): when an emulator answers there, the session reuses it
        # through its forwarder, so fixtures and the code under test reach the same emulator and everything
        # both create carries the session's label. Anything else is theirs to keep.
        if _target_url(config) or not api_healthy(current.rstrip("/"), 3.0):
            return
        os.environ[_TARGET] = current.rstrip("/")  # read by xdist workers too, which inherit the environment
    url = f"http://localhost:{plan.api_port}"
    os.environ["TENSORLAKE_API_URL"] = url
    os.environ[_MARK] = url
    os.environ.pop("TENSORLAKE_SANDBOX_API_URL", None)  # flat paths would bypass the localhost URL above
    if os.environ.get(_TARGET) and not _is_xdist_controller(config):
        # The code under test may call the SDK without any fixture: the forwarder must answer from the start.
        _open_reuse(config, os.environ[_TARGET])


def pytest_unconfigure(config: pytest.Config) -> None:
    reuse = config.stash.get(_REUSE, None)
    if reuse is not None:
        _close(config, reuse)


def _target_url(config: pytest.Config) -> str | None:
    raw = config.getoption("--tensorlake-emulator-url") or os.environ.get("TLE_EMULATOR_URL") or None
    return raw.rstrip("/") if raw else None


def _warn(msg: str) -> None:
    log.warning("%s", msg)


def _info(msg: str) -> None:
    log.info("%s", msg)


def _new_session(config: pytest.Config) -> Any:
    from sdk_shim import sessions

    with contextlib.suppress(Exception):  # a failed reap must not fail the new session
        sessions.reap_dead_sessions(progress=_warn)
    return sessions.Session(sessions.new_label(config.stash[_PLAN].worker))


def _open_reuse(config: pytest.Config, target: str) -> _Open:
    """Open the session on a running emulator: record it, start the labelling forwarder on the plan's port."""
    from sdk_shim.forwarder import Forwarder
    from sdk_shim.names import SessionNames

    session = _new_session(config)

    def record(kind: str, ns: str, ident: str) -> None:
        (session.add_sandbox if kind == "sandbox" else session.add_snapshot)(ns, ident)

    session.update(mode="reused", api_url=target, docker_host=os.environ.get("TLE_DOCKER_HOST"))
    names = SessionNames(session.label.rsplit("-", 1)[-1])  # reused: sessions share the emulator's name space
    forwarder = Forwarder(target, session.label, config.stash[_PLAN].api_port, record, names).start()
    opened = _Open(session=session, forwarder=forwarder, target=target)
    config.stash[_REUSE] = opened
    return opened


def _start_own(config: pytest.Config) -> _Open:
    """Open the session on an emulator of its own (a subprocess on the plan's ports); one-line failures."""
    from sdk_shim import docker_sweep, sessions

    plan = config.stash[_PLAN]
    try:  # milliseconds, before a start-up that takes seconds
        docker_sweep.client(timeout=10).close()
        unreachable = None
    except docker_sweep.DockerUnreachable as exc:
        unreachable = str(exc)
    if unreachable:  # failed outside the except block, so pytest shows no chained traceback
        pytest.fail(f"tensorlake-emulator: {unreachable}", pytrace=False)
    session = _new_session(config)
    data_dir = Path(tempfile.mkdtemp(prefix=f"tle-pytest-{plan.worker or 'main'}-"))
    (data_dir / sessions.DATA_DIR_MARKER).write_text(session.label + "\n")
    proc = EmulatorProcess(data_dir=data_dir, api_port=plan.api_port, proxy_port=plan.proxy_port,
                           session_label=session.label, die_with_parent=True)
    session.update(mode="started", api_url=proc.api_url, data_dir=str(data_dir),
                   docker_host=os.environ.get("TLE_DOCKER_HOST"))
    opened = _Open(session=session, process=proc, target=proc.api_url)
    proc.spawn()  # recorded before the wait, so a session killed during start-up is reaped fully
    session.update(emulator_pid=proc.pid, emulator_start=process_start_time(proc.pid or 0))
    try:
        proc.wait_ready()
        return opened
    except RuntimeError:
        last = proc.log_tail(1).strip() or "(empty log)"  # before _close removes the data folder
        opened.failed = True
        _close(config, opened)
    pytest.fail(f"tensorlake-emulator: the session's emulator did not start: {last} "
                f"(full log: {config.stash.get(_KEPT_LOG, '?')})", pytrace=False)


def _close(config: pytest.Config, opened: _Open) -> None:
    """Stop what the session started, keep the emulator's log if the session failed, remove everything else."""
    from sdk_shim import sessions

    if opened.forwarder is not None:
        opened.forwarder.stop()
    if opened.process is not None:
        opened.process.stop()
        failed = opened.failed or config.stash.get(_FAILED, False)
        if failed and opened.process.log_path and opened.process.log_path.exists():
            kept = sessions.sessions_dir().parent / "logs" / f"{opened.session.label}.log"
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(opened.process.log_path, kept)
            config.stash[_KEPT_LOG] = str(kept)
    # Everything the session made goes: terminate what is left, delete its snapshots, remove its folder.
    sessions.reap(opened.session.record, progress=_info)
    opened.session.close()
    config.stash[_REUSE] = None


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    kept = config.stash.get(_KEPT_LOG, None)
    if kept:
        terminalreporter.write_line(f"tensorlake-emulator: the session failed; its emulator's log is kept at {kept}")


@pytest.fixture(scope="session")
def tensorlake_emulator(request: pytest.FixtureRequest) -> Iterator[TensorlakeEmulator]:
    config = request.config
    namespace = os.environ.get("INDEXIFY_NAMESPACE") or "default"
    timeout = float(config.getini("tensorlake_emulator_request_timeout"))
    opened = config.stash.get(_REUSE, None)
    target = _target_url(config) or os.environ.get(_TARGET)
    if opened is None and target and api_healthy(target, 3.0):
        opened = _open_reuse(config, target)
    elif opened is None and target:
        _warn(f"[tensorlake-emulator] nothing answers at {target}; starting an emulator for this session")
    if opened is not None:
        assert opened.forwarder is not None
        yield TensorlakeEmulator(api_url=opened.forwarder.url, session_label=opened.session.label,
                                 namespace=namespace, mode="reused", target_url=opened.target, request_timeout=timeout)
        return  # closed in pytest_unconfigure: code under test may use the forwarder until the very end
    opened = _start_own(config)
    proc = opened.process
    assert proc is not None
    try:
        yield TensorlakeEmulator(api_url=proc.api_url, session_label=opened.session.label, namespace=namespace,
                                 mode="started", target_url=proc.api_url, request_timeout=timeout,
                                 process=proc, data_dir=proc.data_dir)
    finally:
        config.stash[_FAILED] = request.session.testsfailed > 0  # failures and errors, any phase
        _close(config, opened)


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


@pytest.fixture
def tensorlake_faults(tensorlake_emulator: TensorlakeEmulator) -> Iterator[Any]:
    """An `sdk_shim.control.FaultInjector`: `inject(kind, **params)` puts a fault in force, scoped to
    this session unless a namespace, session or sandbox is given; every fault it made is deleted after
    the test (docs/controls.md "Faults")."""
    from sdk_shim.control import FaultInjector

    injector = FaultInjector(tensorlake_emulator.control)
    yield injector
    try:
        injector.clear()
    except Exception as exc:  # the emulator may be gone; its faults live in memory only
        _warn(f"[tensorlake-emulator] removing the test's faults failed: {exc}")


def _create_kwargs(emu: TensorlakeEmulator, request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("tensorlake_sandbox")
    return emu.sdk_kwargs(**(marker.kwargs if marker else {}))


@pytest.fixture
def tensorlake_sandbox(tensorlake_emulator: TensorlakeEmulator, request: pytest.FixtureRequest) -> Iterator[Any]:
    from tensorlake.sandbox import Sandbox  # type: ignore[import-untyped]

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
    from tensorlake.sandbox import AsyncSandbox  # type: ignore[import-untyped]

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

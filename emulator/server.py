"""Wires the emulator together and serves both ports from one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path

import uvicorn

from emulator import metrics
from emulator.agent_client import AgentClients
from emulator.api.app import build_api
from emulator.api.body_limit import BodyLimit
from emulator.api.images import is_context_upload
from emulator.backend.docker import DockerBackend
from emulator.backend.image_build import DockerImageBuilder
from emulator.checkpoints.engine import CheckpointEngine
from emulator.checkpoints.gvisor import GvisorMechanism
from emulator.checkpoints.mechanisms import choose_mechanism
from emulator.checkpoints.probe import CriuProbe
from emulator.config import Settings, require_agent
from emulator.errors import EmulatorError
from emulator.gate import Gate, GatePolicy
from emulator.http_protocols import JsonErrorsH11Protocol, JsonErrorsWebSocketProtocol
from emulator.labels import instance_label
from emulator.manager.dockerfile import parse_aliases
from emulator.manager.image_logs import BuilderLogMirror
from emulator.manager.images import ImageService
from emulator.manager.sandboxes import SandboxManager
from emulator.model.runtimes import GVISOR_CHECKPOINTABLE
from emulator.proxy.app import ProxyApp
from emulator.request_log import RequestLog, RequestLogger
from emulator.store.sqlite import Store

log = logging.getLogger("emulator")


def _resolver(manager: SandboxManager) -> Callable[[str | None, str], str | None]:
    """For the request log: the id of the sandbox a request names (by id or name), None when unknown."""

    def resolve(namespace: str | None, ident: str) -> str | None:
        try:
            return (manager.lookup(namespace, ident) if namespace else manager.resolve_route(ident)).id
        except EmulatorError:
            return None

    return resolve


class _Server(uvicorn.Server):
    # Signals are handled once for both servers in serve(), not per server.
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


async def _checkpoint_engine(settings: Settings, backend: DockerBackend, store: Store) -> CheckpointEngine:
    """Probe the engine and CRIU, pick the dump mechanism (TLE_CHECKPOINT) and settle what a crash left."""
    engine = await backend.info()
    log.info("docker engine %s, runtimes %s, experimental=%s", engine.version, engine.runtimes, engine.experimental)
    if settings.runtime not in engine.runtimes:
        log.warning("configured runtime %r is not installed; creates will fail with a clear error", settings.runtime)
    docker_info = await backend.docker.system.info()
    if settings.checkpoint_mode == "off":
        probe = CriuProbe(False, "checkpoints are switched off (TLE_CHECKPOINT=off)")
    else:
        probe = await CriuProbe.run(engine.experimental)
    log.info("checkpoints: %s", probe.reason if probe.ok else f"NOT SUPPORTED on this host: {probe.reason}")
    docker_root = Path(docker_info.get("DockerRootDir", "/var/lib/docker"))
    mechanism = choose_mechanism(backend, docker_root, settings.data_dir / "dumps", settings.checkpoint_mode,
                                 "runc", settings.runc_root)  # CRIU dumps serve runc sandboxes only (docs/gvisor.md)
    # gVisor's own checkpoint for gVisor sandboxes under runsc-nonet / runsc-netstack (docs/gvisor.md), where
    # Docker has one of them and checkpoints are not switched off
    gvisor_runtimes = [r for r in GVISOR_CHECKPOINTABLE if r in engine.runtimes]
    gvisor = (GvisorMechanism(backend, docker_root, gvisor_runtimes)
              if gvisor_runtimes and settings.checkpoint_mode != "off" and engine.experimental else None)
    checkpoints = CheckpointEngine(backend, store, settings.data_dir, docker_root, probe, mechanism,
                                   settings.default_image, gvisor)
    await checkpoints.start()
    return checkpoints


async def serve(settings: Settings) -> None:
    require_agent(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.data_dir / "state.sqlite3")
    backend = DockerBackend(settings.docker_host, settings.runtime, instance_label(settings.data_dir))
    agents = AgentClients(backend.init_pid)
    checkpoints = await _checkpoint_engine(settings, backend, store)
    manager = SandboxManager(settings, store, backend, agents, checkpoints)
    aliases = {p: settings.default_image if img == "default" else img
               for p, img in parse_aliases(settings.image_base_aliases).items()}
    images = ImageService(store, backend, DockerImageBuilder(lambda: backend.docker), settings.data_dir,
                          instance_label(settings.data_dir), settings.default_image, aliases,
                          settings.image_max_context_bytes,
                          lambda b: BuilderLogMirror(manager, agents, settings.default_image, b.namespace,
                                                     b.session_label))
    await images.start()
    manager.images = images
    await manager.start()

    # Both ports: the request log outermost (refusals are logged too), then the gate (Host, Origin,
    # token), and uvicorn's own errors as JSON too.
    request_log = RequestLog(settings.request_log_size)
    request_log.listeners.append(metrics.observe_request)
    metrics.STATE.inventory = manager.inventory
    resolve = _resolver(manager)
    api_body = BodyLimit(build_api(settings, manager, request_log, images), settings.api_max_body_bytes,
                         is_context_upload)
    api_app = RequestLogger(Gate(api_body,
                                 GatePolicy.for_port(settings, proxy=False), "api"), request_log, "api", resolve)
    proxy_app = RequestLogger(Gate(ProxyApp(manager, agents), GatePolicy.for_port(settings, proxy=True), "proxy"),
                              request_log, "proxy", resolve)
    # Keep-alive longer than the SDK's idle pool (reqwest: 90 s less its own margin): with uvicorn's
    # 5 s default, a call made ~5 s after the last one races the server's close and fails with
    # "error sending request" (seen in the SDK's own test_lifecycle.py, which sleeps 5 s).
    api = _Server(uvicorn.Config(api_app, host=settings.bind, port=settings.api_port, log_level=settings.log_level,
                                 lifespan="off", access_log=False, timeout_keep_alive=75, http=JsonErrorsH11Protocol,
                                 ws=JsonErrorsWebSocketProtocol))
    proxy = _Server(uvicorn.Config(proxy_app, host=settings.bind, port=settings.proxy_port,
                                   log_level=settings.log_level, lifespan="off", access_log=False,
                                   timeout_keep_alive=75, http=JsonErrorsH11Protocol, ws=JsonErrorsWebSocketProtocol))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        api.should_exit = proxy.should_exit = True
        request_log.close()  # open /emulator/requests/stream readers would hold the API server open

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    log.info("lifecycle API on http://%s:%d, sandbox proxy on http://%s:%d (advertised as %s), data in %s",
             settings.bind, settings.api_port, settings.bind, settings.proxy_port,
             settings.advertised_proxy_url, settings.data_dir)
    log.info("API key %s; Host and Origin %s", "required (TLE_API_KEY)" if settings.api_key else "not required",
             "not checked (TLE_ALLOWED_HOSTS=*)" if "*" in settings.extra_hosts
             else f"checked against {', '.join(sorted(GatePolicy.for_port(settings, proxy=True).names))}")
    try:
        await asyncio.gather(api.serve(), proxy.serve())
    finally:
        await images.stop()
        await manager.stop()
        await backend.close()
        store.close()
        log.info("stopped")

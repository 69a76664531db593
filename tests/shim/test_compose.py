"""docker-compose.yml: the emulator in a container, reached by the real SDK under a non-localhost name.

Only loopback traffic is allowed here, so the run adds docker/compose.loopback.yml (host network, `emulator`
resolving to 127.0.0.1): the SDK still sees a non-local host and takes the TENSORLAKE_SANDBOX_API_URL path of
docs/protocol.md section 2. Where the host cannot start privileged containers, docker/compose.unprivileged.yml is
added too. Skipped when neither `docker compose` nor `docker-compose` is installed, or when the image is not
built and docker/wheels (docker/fetch-wheels.sh) is empty.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import tomllib
from shimhelpers import REPO, docker_ids

from emulator.server import instance_label
from sdk_shim.docker_sweep import instance_selector, sweep
from sdk_shim.launcher import api_healthy, free_port

IMAGE = "tensorlake-emulator/server:latest"


def _compose() -> list[str] | None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _image_present() -> bool:
    return subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0


def test_image_requirements_cover_the_project_dependencies() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in deps}
    lines = (REPO / "docker/requirements.txt").read_text().splitlines()
    have = {re.split(r"[<>=!~ \[]", ln, maxsplit=1)[0].lower() for ln in lines if ln.strip() and ln[0] != "#"}
    assert wanted <= have, wanted - have


def test_compose_up_gives_a_working_emulator() -> None:
    compose = _compose()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    wheels = list((REPO / "docker/wheels").glob("pip-*.whl"))
    if not _image_present() and not wheels:
        pytest.skip(f"{IMAGE} is not built and docker/wheels is empty (run docker/fetch-wheels.sh)")
    api_port, proxy_port = free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="tle-k-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLE_", "TENSORLAKE_"))}
    env.update({"TLE_API_PORT": str(api_port), "TLE_PROXY_PORT": str(proxy_port), "TLE_DATA_DIR": str(data_dir),
                "PWD": str(REPO), "TLE_API_KEY": f"compose-test-{os.getpid()}"})
    project = f"tleshim{os.getpid()}"
    files = ["-f", "docker-compose.yml", "-f", "docker/compose.loopback.yml"]

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose, "-p", project, *files, *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout)

    try:
        if wheels:
            built = run("build", "emulator", timeout=600)
            assert built.returncode == 0, built.stdout + built.stderr
        up = run("up", "-d", "emulator")
        if up.returncode != 0 and "apply caps" in up.stdout + up.stderr:
            run("down")
            files += ["-f", "docker/compose.unprivileged.yml"]
            up = run("up", "-d", "emulator")
        assert up.returncode == 0, up.stdout + up.stderr
        check = run("run", "--rm", "check")
        logs = run("logs", "emulator").stdout
        assert check.returncode == 0, check.stdout + check.stderr + logs
        assert "[check] OK" in check.stdout
        assert f"TENSORLAKE_SANDBOX_API_URL=http://emulator:{api_port}" in check.stdout
        # The emulator advertises the proxy under its compose name, and the host CLI can inspect it.
        assert api_healthy(f"http://127.0.0.1:{api_port}")
        status = subprocess.run([str(REPO / ".venv/bin/tensorlake-emulator"), "status", "--url",
                                 f"http://127.0.0.1:{api_port}"], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "TENSORLAKE_API_KEY": env["TLE_API_KEY"]})
        assert f"proxy http://emulator:{proxy_port}" in status.stdout, status.stdout
    finally:
        run("down", "--remove-orphans")
        sweep(*instance_selector(instance_label(data_dir)))
        shutil.rmtree(data_dir, ignore_errors=True)
    assert docker_ids("containers", f"dev.tensorlake-emulator.instance={instance_label(data_dir)}") == []

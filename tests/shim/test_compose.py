"""docker-compose.yml: the emulator in a container, reached by the real SDK under a non-localhost name.

The test runs the README's recipe as written ("docker-compose: the emulator as a service"), with the two
options the README names for this case: `--loopback` (only loopback traffic is allowed here: host network,
`emulator` resolving to 127.0.0.1, so the SDK still takes the TENSORLAKE_SANDBOX_API_URL path of
docs/protocol.md section 2) and `--env-file` (its own env file, so a user's `.env` is neither read nor changed).
docker/compose-prepare.sh provides what the recipe needs (Docker Compose v2, the image's wheels, the key, the
overrides for this host), so nothing here skips. What it creates is labelled by its compose project and removed:
the container, the sandboxes (by the emulator's instance label), the data folder, and the image
tensorlake-emulator/server:latest when it was not there before (set-up does not build it). docker/wheels stays,
as a cache (git-ignored).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib
from shimhelpers import REPO, docker_ids

from emulator.server import instance_label
from sdk_shim.docker_sweep import instance_selector, sweep
from sdk_shim.launcher import api_healthy, free_port

IMAGE = "tensorlake-emulator/server:latest"
PREPARE = str(REPO / "docker/compose-prepare.sh")


def _image_present() -> bool:
    return subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0


def _env() -> dict[str, str]:
    """This process's environment without the emulator's, the SDK's and compose's own variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLE_", "TENSORLAKE_", "COMPOSE_"))}
    # fetch-wheels.sh downloads with this interpreter's pip (a worktree may have no .venv of its own).
    env.update({"PWD": str(REPO), "PIP": f"{sys.executable} -m pip"})
    return env


@pytest.fixture
def env_file() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tle-compose-") as d:
        yield Path(d) / "compose.env"


def test_image_requirements_cover_the_project_dependencies() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in deps}
    lines = (REPO / "docker/requirements.txt").read_text().splitlines()
    have = {re.split(r"[<>=!~ \[]", ln, maxsplit=1)[0].lower() for ln in lines if ln.strip() and ln[0] != "#"}
    assert wanted <= have, wanted - have


def test_prepare_names_a_taken_loopback_port(env_file: Path) -> None:
    """A port in the env file that another program holds is refused by name, not left to 'Container is unhealthy'."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env_file.write_text(f"TLE_API_PORT={port}\nCOMPOSE_PROJECT_NAME=tleshimport{os.getpid()}\n")
        out = subprocess.run([PREPARE, "--loopback", "--env-file", str(env_file)], env=_env(), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert out.returncode != 0, out.stdout
    assert f"TLE_API_PORT={port} in {env_file} is in use on 127.0.0.1" in out.stderr, out.stdout + out.stderr


def test_readme_recipe_gives_a_working_emulator(env_file: Path) -> None:
    image_before = _image_present()
    api_port, proxy_port = free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="tle-k-", dir="/tmp"))
    project = f"tleshim{os.getpid()}"
    env_file.write_text(f"COMPOSE_PROJECT_NAME={project}\nTLE_DATA_DIR={data_dir}\n"
                        f"TLE_API_PORT={api_port}\nTLE_PROXY_PORT={proxy_port}\n")
    env = _env()

    def compose(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "compose", "--env-file", str(env_file), *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)

    try:
        # The README's recipe, step by step.
        prep = subprocess.run([PREPARE, "--loopback", "--env-file", str(env_file)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert prep.returncode == 0, prep.stdout + prep.stderr
        settings = dict(ln.split("=", 1) for ln in env_file.read_text().splitlines() if "=" in ln)
        # The ports the test chose stay; the override for this host is chosen by probing it, and said.
        assert (settings["TLE_API_PORT"], settings["TLE_PROXY_PORT"]) == (str(api_port), str(proxy_port))
        assert settings["COMPOSE_FILE"].endswith("docker/compose.loopback.yml"), settings
        assert "[compose] host: privileged containers" in prep.stdout, prep.stdout
        up = compose("up", "-d", "--wait", "--build", "emulator")
        assert up.returncode == 0, up.stdout + up.stderr
        check = compose("run", "--rm", "check")
        logs = compose("logs", "emulator").stdout
        assert check.returncode == 0, check.stdout + check.stderr + logs
        assert "[check] OK" in check.stdout
        assert f"TENSORLAKE_SANDBOX_API_URL=http://emulator:{api_port}" in check.stdout
        # The emulator advertises the proxy under its compose name, and the host CLI can inspect it.
        assert api_healthy(f"http://127.0.0.1:{api_port}")
        status = subprocess.run([sys.executable, "-m", "emulator.cli", "status", "--url", f"http://127.0.0.1:{api_port}"],
                                capture_output=True, text=True, timeout=120, cwd=REPO,
                                env={**env, "PYTHONPATH": str(REPO), "TENSORLAKE_API_KEY": settings["TLE_API_KEY"]})
        assert f"proxy http://emulator:{proxy_port}" in status.stdout, status.stdout + status.stderr
    finally:
        compose("down", "--remove-orphans", *([] if image_before else ["--rmi", "all"]))
        sweep(*instance_selector(instance_label(data_dir)))
        shutil.rmtree(data_dir, ignore_errors=True)
    assert docker_ids("containers", f"com.docker.compose.project={project}") == []
    assert docker_ids("containers", f"dev.tensorlake-emulator.instance={instance_label(data_dir)}") == []
    assert _image_present() == image_before

"""Fixtures of the agent's tests: one agent per test module, its client, a scratch directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid

import pytest
from agent_helpers import Agent


@pytest.fixture(scope="module")
def agent():
    a = Agent()
    yield a
    a.stop()


@pytest.fixture
def client(agent):
    return agent.client


@pytest.fixture
def tmpdir_path():
    d = tempfile.mkdtemp(prefix="tle-agent-files-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def files_dir():
    d = f"/tmp/tle-agent-fid-{uuid.uuid4().hex[:8]}"
    os.makedirs(d)
    yield d
    subprocess.run(["rm", "-rf", d])

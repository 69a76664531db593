"""Routes (routing): what answers which method and path, 404 and 405, and the agent's own layout as a directory.

The agent runs as a real subprocess (agent_helpers.Agent); see conftest.py for the fixtures."""

from __future__ import annotations

import sys

from agent_helpers import AGENT

# ------------------------------------------------------------------------------------------------ layout


def _agent_modules() -> dict:
    return {p.stem: p for p in sorted(AGENT.glob("*.py"))}


def test_package_layout_is_safe_to_run_as_a_directory():
    """`python3 /.tle/agent` puts the agent's directory first on sys.path: a module named like a stdlib module
    would shadow it for the whole agent, and anything but the stdlib may be missing in the sandbox's image."""
    import ast

    modules = _agent_modules()
    assert "__main__" in modules and not (AGENT / "__init__.py").exists()
    stdlib = set(sys.stdlib_module_names)
    assert not (set(modules) - {"__main__"}) & stdlib
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path), feature_version=(3, 9))  # the oldest python3 supported
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: relative import"
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                assert top in stdlib or top in modules, f"{name} imports {top}: neither stdlib nor the agent's"


# ------------------------------------------------------------------------------------------------ basics


def test_health_and_info(client):
    r = client.get("/api/v1/health")
    assert r.status_code == 200 and r.json() == {"healthy": True}
    assert r.headers["content-type"] == "application/json"
    info = client.get("/api/v1/info").json()
    assert set(info) >= {"version", "uptime_secs", "running_processes", "total_processes"}
    assert isinstance(info["version"], str) and isinstance(info["uptime_secs"], int)


def test_unknown_route_and_method(client):
    r = client.get("/api/v1/nope")
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
    r = client.delete("/api/v1/health")
    assert r.status_code == 405 and r.json()["code"] == "METHOD_NOT_ALLOWED"
    r = client.get("/")
    assert r.status_code == 404

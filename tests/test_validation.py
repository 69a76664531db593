"""Bad input to the lifecycle API (issue 9, kind 6): every field is checked before anything is stored.

Each invalid value is sent raw (httpx) to the session's real emulator and must come back as a JSON
400 in the SDK's error shape, with nothing stored: the namespace stays empty and the real SDK's
`Sandbox.list()` keeps working. The limits are the SDK's own types, which the last test checks
against the pinned SDK itself.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from tensorlake.sandbox import Sandbox

from emulator.api.validation import image_reference_problem
from sdk_shim.launcher import EmulatorProcess

T = 60.0
BAD_CREATES: list[tuple[str, Any]] = [
    ("port below 1", {"exposed_ports": [-1]}),
    ("port 0", {"exposed_ports": [0]}),
    ("port above u16", {"exposed_ports": [65536]}),
    ("reserved port", {"exposed_ports": [9501]}),
    ("port as string", {"exposed_ports": ["8080"]}),
    ("port as bool", {"exposed_ports": [True]}),
    ("ports not a list", {"exposed_ports": 8080}),
    ("negative timeout", {"timeout_secs": -1}),
    ("timeout above i64", {"timeout_secs": 2**63}),
    ("timeout past the cap", {"timeout_secs": 2**31}),
    ("timeout as float", {"timeout_secs": 1.5}),
    ("timeout as string", {"timeout_secs": "60"}),
    ("negative max_pending", {"max_pending_secs": -1}),
    ("zero cpus", {"resources": {"cpus": 0}}),
    ("negative cpus", {"resources": {"cpus": -1.0}}),
    ("cpus as string", {"resources": {"cpus": "1"}}),
    ("cpus as bool", {"resources": {"cpus": True}}),
    ("zero memory", {"resources": {"memory_mb": 0}}),
    ("memory above i64", {"resources": {"memory_mb": 2**63}}),
    ("memory as float", {"resources": {"memory_mb": 512.5}}),
    ("negative disk", {"resources": {"disk_mb": -1}}),
    ("disk above i64", {"resources": {"disk_mb": 2**64}}),
    ("zero gpus", {"resources": {"gpus": [{"count": 0, "model": "H100"}]}}),
    ("gpus above u32", {"resources": {"gpus": [{"count": 2**32, "model": "H100"}]}}),
    ("resources not an object", {"resources": "big"}),
    ("empty name", {"name": ""}),
    ("name with a space", {"name": "a b"}),
    ("name starting with '-'", {"name": "-x"}),
    ("name too long", {"name": "x" * 64}),
    ("name not ASCII", {"name": "café"}),
    ("name shaped like an id", {"name": "0123456789abcdef0123"}),
    ("name not a string", {"name": 12}),
    ("upper-case image", {"image": "Ubuntu"}),
    ("image with a space", {"image": "a b"}),
    ("empty image", {"image": ""}),
    ("image path traversal", {"image": "../../containers/json"}),
    ("image with two tags", {"image": "img:a:b"}),
    ("image with a bad digest", {"image": "img@sha256:zz"}),
    ("image too long", {"image": "a" * 600}),
    ("empty command", {"entrypoint": [""]}),
    ("NUL in entrypoint", {"entrypoint": ["sh", "a\x00b"]}),
    ("surrogate in entrypoint", {"entrypoint": ["sh", "\ud800"]}),
    ("entrypoint not a list", {"entrypoint": "sleep 1"}),
    ("entrypoint of numbers", {"entrypoint": [1]}),
    ("entrypoint too large", {"entrypoint": ["echo"] + ["x" * 1000] * 70}),
    ("network rule not a host", {"network": {"allow_out": ["not a host!"]}}),
    ("network rule bad port", {"network": {"deny_out": ["1.2.3.4:99999"]}}),
    ("network rules not a list", {"network": {"allow_out": "1.1.1.1"}}),
    ("network switch as string", {"network": {"allow_internet_access": "no"}}),
    ("empty snapshot id", {"snapshot_id": ""}),
    ("snapshot id number", {"snapshot_id": 5}),
    ("auto_resume as string", {"auto_resume": "yes"}),
    ("allow_unauthenticated_access as int", {"allow_unauthenticated_access": 1}),
    ("wait as string", {"wait": "false"}),
    ("mount without path", {"file_systems": [{"file_system_id": "x"}]}),
]
BAD_BODIES: list[tuple[str, bytes]] = [
    ("not JSON", b"{bad"),
    ("NaN", b'{"resources": {"cpus": NaN}}'),
    ("Infinity", b'{"timeout_secs": Infinity}'),
    ("float overflow", b'{"resources": {"cpus": 1e400}}'),
    ("nested too deep", b"[" * 50_000 + b"]" * 50_000),
    ("integer with 5000 digits", b'{"timeout_secs": ' + b"9" * 5000 + b"}"),
    ("not UTF-8", b'{"name": "\xff\xfe"}'),
    ("a list", b"[1, 2]"),
    ("a string", b'"x"'),
    ("null", b"null"),
]


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    """The JSON error body the SDK reads (docs/protocol.md §3.2), after checking its status."""
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body["error"], str) and body["error"] and isinstance(body["code"], str), body
    return body


@pytest.fixture(scope="module")
def ns() -> str:
    return f"val-{_uid()}"


@pytest.fixture(scope="module")
def api(emulator: EmulatorProcess) -> httpx.Client:
    with httpx.Client(base_url=emulator.api_url, timeout=30) as client:
        yield client


def _assert_nothing_stored(api: httpx.Client, ns: str) -> None:
    assert api.get(f"/v1/namespaces/{ns}/sandboxes").json() == {"sandboxes": []}
    assert list(Sandbox.list(namespace=ns, request_timeout=10)) == []


@pytest.mark.parametrize(("what", "body"), BAD_CREATES, ids=[w for w, _ in BAD_CREATES])
def test_invalid_create_field_is_a_400_and_nothing_is_stored(api: httpx.Client, ns: str, what: str,
                                                             body: dict[str, Any]) -> None:
    resp = api.post(f"/v1/namespaces/{ns}/sandboxes", content=json.dumps(body),
                    headers={"content-type": "application/json"})
    err = _error(resp, 400)
    field = next(iter(body))
    assert err["code"] == "BAD_REQUEST" and field in err["error"], err
    _assert_nothing_stored(api, ns)


@pytest.mark.parametrize(("what", "raw"), BAD_BODIES, ids=[w for w, _ in BAD_BODIES])
def test_malformed_body_is_a_400(api: httpx.Client, ns: str, what: str, raw: bytes) -> None:
    for path in (f"/v1/namespaces/{ns}/sandboxes", "/sandboxes"):
        err = _error(api.post(path, content=raw, headers={"content-type": "application/json"}), 400)
        assert err["code"] == "BAD_REQUEST"
    _assert_nothing_stored(api, ns)


def test_bad_path_query_and_header_values(api: httpx.Client, ns: str) -> None:
    assert _error(api.post("/v1/namespaces/a%00b/sandboxes", json={}), 400)["code"] == "BAD_REQUEST"
    assert _error(api.get("/v1/namespaces/-x/sandboxes"), 400)["code"] == "BAD_REQUEST"
    headers = {"x-tensorlake-request-timeout-grace-ms": "nan"}
    _error(api.post(f"/v1/namespaces/{ns}/sandboxes", json={}, headers=headers), 400)
    _error(api.post(f"/v1/namespaces/{ns}/sandboxes", json={}, headers={"x-tle-session": "x" * 200}), 400)
    _assert_nothing_stored(api, ns)


def test_unknown_routes_and_methods_answer_json(api: httpx.Client) -> None:
    for path in ("/nope", "/v1/namespaces/default/sandboxes/x/y/z", "/v1/other"):
        assert _error(api.get(path), 404)["code"] == "NOT_FOUND"
    assert _error(api.put("/healthz"), 405)["code"] == "METHOD_NOT_ALLOWED"
    assert _error(api.request("PATCH", "/v1/namespaces/default/sandboxes"), 405)["code"] == "METHOD_NOT_ALLOWED"
    _error(api.get("/v1/namespaces/default/sandboxes/nosuch"), 404)
    _error(api.delete("/v1/namespaces/default/snapshots/nosuch"), 404)


@pytest.fixture(scope="module")
def live_ns(ns: str) -> str:
    return f"{ns}-live"


@pytest.fixture(scope="module")
def named(api: httpx.Client, live_ns: str) -> Any:
    """A sandbox, alone in its namespace, whose edge-of-range fields were all accepted."""
    name = f"Edge_{_uid()}"
    sb = Sandbox.create(
        name=name, namespace=live_ns, memory_mb=256, timeout_secs=2**31 - 1, exposed_ports=[1, 65535, 8080],
        entrypoint=["sleep", "infinity"], request_timeout=T)
    yield sb
    sb.terminate()


def test_edge_values_are_accepted_and_read_back(api: httpx.Client, live_ns: str, named: Any) -> None:
    info = api.get(f"/v1/namespaces/{live_ns}/sandboxes/{named.sandbox_id}").json()
    assert info["exposed_ports"] == [1, 8080, 65535] and info["timeout_secs"] == 2**31 - 1
    resp = api.patch(f"/v1/namespaces/{live_ns}/sandboxes/{named.sandbox_id}",
                     json={"exposed_ports": [443, 22, 443],
                           "network": {"allow_internet_access": True,
                                       "allow_out": ["8.8.8.8", "10.0.0.0/8", "localhost:443", "::1"],
                                       "deny_out": ["192.168.1.0/24"]}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["exposed_ports"] == [22, 443]
    (listed,) = [s for s in Sandbox.list(namespace=live_ns, request_timeout=10) if s.sandbox_id == named.sandbox_id]
    assert listed.exposed_ports == [22, 443] and listed.network_policy.allow_out[2] == "localhost:443"


BAD_UPDATES: list[tuple[str, Any]] = [
    ("port above u16", {"exposed_ports": [70000]}),
    ("reserved port", {"exposed_ports": [9501]}),
    ("bad name", {"name": "a b"}),
    ("null name", {"name": None}),
    ("network rule", {"network": {"allow_out": ["x y"]}}),
    ("cpus as string", {"resources": {"cpus": "2"}}),
    ("negative memory", {"resources": {"memory_mb": -1}}),
    ("auto_resume as string", {"auto_resume": "no"}),
    ("empty update", {}),
]


@pytest.mark.parametrize(("what", "body"), BAD_UPDATES, ids=[w for w, _ in BAD_UPDATES])
def test_invalid_update_is_a_400_and_changes_nothing(api: httpx.Client, live_ns: str, named: Any, what: str,
                                                     body: dict[str, Any]) -> None:
    path = f"/v1/namespaces/{live_ns}/sandboxes/{named.sandbox_id}"
    before = api.get(path).json()
    assert _error(api.patch(path, json=body), 400)["code"] == "BAD_REQUEST"
    after = api.get(path).json()
    assert after == before
    assert [s.sandbox_id for s in Sandbox.list(namespace=live_ns, request_timeout=10)] == [named.sandbox_id]


def test_bad_wait_and_times_are_a_400(api: httpx.Client, live_ns: str, named: Any) -> None:
    base = f"/v1/namespaces/{live_ns}/sandboxes/{named.sandbox_id}"
    for value in ("abc", "-1", "inf", "nan"):
        assert _error(api.post(f"{base}/suspend?wait_ms={value}"), 400)["code"] == "BAD_REQUEST"
        assert _error(api.post(f"{base}/resume?wait_ms={value}"), 400)["code"] == "BAD_REQUEST"
    for value in ("abc", "0", "-1", "1.5", "99999"):
        assert _error(api.post(f"{base}/copy?times={value}"), 400)["code"] == "BAD_REQUEST"
    assert api.get(base).json()["status"] == "running"


def test_invalid_image_is_a_400_not_a_503(api: httpx.Client, ns: str) -> None:
    for image in ("Ubuntu:latest", "a//b", "x:-bad", "img@sha256:abc"):
        resp = api.post(f"/v1/namespaces/{ns}/sandboxes", json={"image": image})
        assert _error(resp, 400)["code"] == "BAD_REQUEST", image
    _assert_nothing_stored(api, ns)


# None of the valid ones exists locally, so the engine answers 404 for them and 400 for the invalid ones.
REFERENCES = ["tle-probe-nonexistent", "tle-probe-nonexistent:1.36", "library/tle-probe-x",
              "docker.io/library/tle-probe-x:latest", "localhost:5000/a/b:c", "localhost/x",
              "my.registry:443/team/app_v2__x:tag-1.0", "a" * 64, "img@sha256:" + "a" * 64,
              "img:tag@sha256:" + "0" * 64, "localhost:99999999999/a",
              "[::1]:5000/img", "Ubuntu", "UPPER/case", "a b", "", "../../containers/json", "img:a:b",
              "img@sha256:zz", "a//b", "-a", "a-", "a__b", "a___b", "x:" + "t" * 129, "x:.bad",
              "Registry.IO/team/app", "reg.io/Team/app", "img:tag/x", "a/b/", "/a"]


def test_image_reference_grammar_agrees_with_the_docker_engine() -> None:
    """The engine itself parses each reference: a container create answers 400 when it cannot."""
    transport = httpx.HTTPTransport(uds="/var/run/docker.sock")
    with httpx.Client(transport=transport, base_url="http://docker", timeout=10) as docker:
        for ref in REFERENCES:
            resp = docker.post("/containers/create", json={"Image": ref, "Labels": {"dev.tle-test.probe": "1"}})
            if resp.status_code == 201:  # not expected: nothing by these names exists; leave nothing behind
                docker.delete(f"/containers/{resp.json()['Id']}", params={"force": "1"})
            assert resp.status_code in (400, 404), (ref, resp.status_code, resp.text)
            engine_ok = resp.status_code == 404
            assert engine_ok == (image_reference_problem(ref) is None), (ref, resp.text, image_reference_problem(ref))


def test_sdk_types_are_the_limits() -> None:
    """The pinned SDK itself rejects a list holding one value past each limit (the reason for kind 6).

    A loopback server serves SandboxInfo bodies to the real SDK's `Sandbox.list()`: at the limit the
    list parses, one past it the whole list fails.
    """
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body["b"])))
            self.end_headers()
            self.wfile.write(body["b"])

        def log_message(self, *args: Any) -> None:
            pass

    base = {"id": "abc", "namespace": "default", "status": "running", "exposed_ports": [],
            "resources": {"cpus": 1.0, "memory_mb": 1024, "disk_mb": 10240}, "sandbox_url": "http://localhost:1"}
    cases = [("exposed_ports", [65535], [65536]), ("exposed_ports", [1], [-1]),
             ("timeout_secs", 2**63 - 1, 2**63), ("resources.memory_mb", 2**63 - 1, 2**63),
             ("resources.disk_mb", 2**63 - 1, 2**63)]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://localhost:{server.server_port}"
        for field, ok, bad in cases:
            for value, parses in ((ok, True), (bad, False)):
                info = json.loads(json.dumps(base))
                target = info["resources"] if field.startswith("resources.") else info
                target[field.split(".")[-1]] = value
                body["b"] = json.dumps({"sandboxes": [info]}).encode()
                try:
                    list(Sandbox.list(api_url=url, request_timeout=5))
                    parsed = True
                except Exception:
                    parsed = False
                assert parsed == parses, (field, value)
    finally:
        server.shutdown()

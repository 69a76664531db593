"""The request log (issue 17): lifecycle and proxy requests of the real SDK, queried, filtered and streamed."""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import urlsplit

from tensorlake.sandbox import Sandbox

from sdk_shim.launcher import EmulatorProcess

T = 60.0


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _requests(api_url: str, **filters: object) -> list[dict]:
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    code, body = _get(f"{api_url}/emulator/requests?{query}")
    assert code == 200, body
    return body["requests"]


def test_lifecycle_and_proxy_requests_are_logged_and_filtered(emulator: EmulatorProcess) -> None:
    url = emulator.api_url
    ns = f"log-{uuid.uuid4().hex[:8]}"
    name = f"n-{uuid.uuid4().hex[:8]}"
    since = _get(f"{url}/emulator/clock")[1]["now_ms"]
    sb = Sandbox.create(namespace=ns, name=name, cpus=1.0, memory_mb=256, request_timeout=T)
    try:
        assert sb.run("echo", ["hi"]).stdout.strip() == "hi"
        sb.write_file("/tmp/x", b"data")
        assert sb.read_file("/tmp/x").value == b"data"
        assert _get(f"{url}/v1/namespaces/{ns}/sandboxes/{name}")[0] == 200  # by name: logged under the id
        assert _get(f"{url}/v1/namespaces/{ns}/sandboxes/nosuchsandbox")[0] == 404
        mine = _requests(url, sandbox=sb.sandbox_id)
        create = [e for e in mine if e["method"] == "POST" and e["path"] == f"/v1/namespaces/{ns}/sandboxes"]
        assert len(create) == 1 and create[0]["status"] == 200 and create[0]["port"] == "api"
        assert create[0]["latency_ms"] > 0 and create[0]["time_ms"] >= since
        by_name = [e for e in mine if e["method"] == "GET" and e["path"].endswith(f"/sandboxes/{name}")]
        assert len(by_name) == 1 and by_name[0]["sandbox"] == sb.sandbox_id
        proxied = [e for e in mine if e["port"] == "proxy"]
        assert len(proxied) >= 3 and all(e["status"] < 400 for e in proxied)
        assert any(e["method"] == "PUT" for e in proxied) and any(e["method"] == "GET" for e in proxied)
        # Filters: by method, by status class and exact status, by time, by port, by seq.
        assert {e["method"] for e in _requests(url, sandbox=sb.sandbox_id, method="put")} == {"PUT"}
        missing = _requests(url, status="404", since=since, path="nosuchsandbox")
        assert [(e["sandbox"], e["status"]) for e in missing] == [("nosuchsandbox", 404)]
        assert _requests(url, status="4xx", sandbox=sb.sandbox_id) == []
        assert {e["port"] for e in _requests(url, sandbox=sb.sandbox_id, port="proxy")} == {"proxy"}
        last = mine[-1]["seq"]
        assert _requests(url, sandbox=sb.sandbox_id, after=last) == []
        assert _requests(url, since=int(time.time() * 1000) + 3_600_000 * 24 * 365 * 50) == []
        seqs = [e["seq"] for e in _requests(url)]
        assert seqs == sorted(seqs) and len(_requests(url, limit=2)) == 2
        # The emulator's own routes are not logged.
        assert _requests(url, path="/emulator/") == []
        code, body = _get(f"{url}/emulator/requests?status=abc&since=yesterday")
        assert code == 400 and body["code"] == "BAD_REQUEST"
    finally:
        sb.terminate()


def test_a_request_refused_by_the_gate_is_logged(emulator: EmulatorProcess) -> None:
    url = emulator.api_url
    path = f"/v1/namespaces/gate-{uuid.uuid4().hex[:6]}/sandboxes"
    assert _get(f"{url}{path}", headers={"Host": "attacker.example"})[0] == 403
    entries = _requests(url, path=path)
    assert [(e["method"], e["status"], e["port"]) for e in entries] == [("GET", 403, "api")]


def _stream(api_url: str, query: str, out: queue.Queue, stop: threading.Event) -> None:
    parts = urlsplit(api_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("GET", f"/emulator/requests/stream?{query}")
    resp = conn.getresponse()
    out.put(("head", resp.status, resp.getheader("content-type")))
    event: dict[str, str] = {}
    while not stop.is_set():
        line = resp.readline()
        if not line:
            break
        text = line.decode().rstrip("\n")
        if text.startswith(":"):
            out.put(("comment", text))
        elif text == "":
            if event:
                out.put(("event", event))
            event = {}
        else:
            key, _, value = text.partition(": ")
            event[key] = value
    conn.close()


def test_the_request_log_is_streamed_as_server_sent_events(emulator: EmulatorProcess) -> None:
    url = emulator.api_url
    sb = Sandbox.create(cpus=1.0, memory_mb=256, request_timeout=T)
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    reader = threading.Thread(target=_stream, args=(url, f"sandbox={sb.sandbox_id}", out, stop), daemon=True)
    reader.start()
    try:
        assert out.get(timeout=10) == ("head", 200, "text/event-stream; charset=utf-8")
        assert out.get(timeout=10) == ("comment", ": connected")
        sb.run("echo", ["streamed"])
        _get(f"{url}/v1/namespaces/default/sandboxes/{sb.sandbox_id}")
        _get(f"{url}/v1/namespaces/default/sandboxes")  # no sandbox: filtered out of this stream
        events = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            kind, *rest = out.get(timeout=20)
            if kind == "event":
                events.append(rest[0])
                entry = json.loads(rest[0]["data"])
                if entry["port"] == "api" and entry["method"] == "GET":
                    break
        entries = [json.loads(e["data"]) for e in events]
        assert all(e["event"] == "request" and int(e["id"]) == json.loads(e["data"])["seq"] for e in events)
        assert all(e["sandbox"] == sb.sandbox_id for e in entries)
        assert any(e["port"] == "proxy" for e in entries)
        assert entries[-1]["path"] == f"/v1/namespaces/default/sandboxes/{sb.sandbox_id}"
    finally:
        stop.set()
        sb.terminate()
    # A reader reconnecting with ?after= (or Last-Event-ID) gets what it missed first, then new ones.
    again: queue.Queue = queue.Queue()
    query = f"sandbox={sb.sandbox_id}&after={entries[0]['seq'] - 1}"
    stop_again = threading.Event()
    threading.Thread(target=_stream, args=(url, query, again, stop_again), daemon=True).start()
    assert again.get(timeout=10)[0] == "head" and again.get(timeout=10)[0] == "comment"
    replayed = json.loads(again.get(timeout=10)[1]["data"])
    assert replayed == entries[0]
    stop_again.set()

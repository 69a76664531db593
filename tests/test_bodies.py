"""Malformed JSON bodies on every endpoint that reads one (emulator/api/bodies.py), over plain HTTP
against a real emulator: each is a 400 in the SDK's error shape naming the problem, never a 500."""

from __future__ import annotations

import httpx
import pytest

from sdk_shim.launcher import EmulatorProcess

NS = "/v1/namespaces/default"
ENDPOINTS = [
    ("POST", f"{NS}/sandboxes"),
    ("POST", f"{NS}/sandbox-pools"),
    ("POST", "/images/v4/builds"),
    ("POST", "/images/v4/builds/cancel"),
    ("POST", "/platform/v1/sandbox-template-builds"),
    ("POST", "/emulator/faults"),
    ("POST", "/emulator/clock/advance"),
    ("POST", "/project/default/repos/tle-bodies"),
]
BAD = {
    "truncated": b'{"image": ',
    "array": b"[1, 2]",
    "string": b'"text"',
    "nan": b'{"cpus": NaN}',
    "bad utf-8": b'{"name": "\xff\xfe"}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "wrong types": b'{"image": 5, "kind": 7, "name": [], "seconds": "x", "build_id": {}, "memory_mb": "big"}',
}


@pytest.mark.parametrize("method,path", ENDPOINTS)
@pytest.mark.parametrize("case", list(BAD))
def test_a_malformed_body_is_a_clear_400(emulator: EmulatorProcess, method: str, path: str, case: str) -> None:
    r = httpx.request(method, emulator.api_url + path, content=BAD[case], timeout=10,
                      headers={"content-type": "application/json", "authorization": "Bearer any-key-works"})
    assert r.status_code == 400, (r.status_code, r.text[:300])
    err = r.json()
    assert isinstance(err["error"], str) and err["error"] and isinstance(err["code"], str), err

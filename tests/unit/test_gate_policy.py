"""Unit tests of the gate's pure parts: host names of Host/Origin values and the per-port policy."""

from __future__ import annotations

import pytest

from emulator.config import Settings
from emulator.errors import HostNotAllowed, Unauthorized
from emulator.gate import GatePolicy, host_name


@pytest.mark.parametrize("value, name", [
    ("localhost", "localhost"), ("LOCALHOST:8900", "localhost"), ("127.0.0.1:1", "127.0.0.1"),
    ("[::1]:9443", "::1"), ("[::1]", "::1"), ("emulator.", "emulator"), ("Emulator:9443", "emulator"),
    ("a:b", None), ("[::1", None), ("[::1]x", None), ("", None), ("host:123456", None), ("h:²", None),
])
def test_host_name(value: str, name: str | None) -> None:
    assert host_name(value) == name


def _scope(**headers: str) -> dict:
    return {"type": "http", "path": "/x", "headers": [(k.replace("_", "-").encode(), v.encode())
                                                       for k, v in headers.items()]}


def test_policy_names_come_from_bind_proxy_url_and_extra_hosts() -> None:
    s = Settings(bind="10.1.2.3", proxy_url="http://Emulator:9443", allowed_hosts=" a.example , B.example. ")
    api = GatePolicy.for_port(s, proxy=False)
    assert api.names == {"localhost", "127.0.0.1", "::1", "10.1.2.3", "emulator", "a.example", "b.example"}
    assert not api.local_routing and api.token is None and not api.any_host
    wildcard = GatePolicy.for_port(Settings(bind="0.0.0.0", allowed_hosts="*"), proxy=True)
    assert "0.0.0.0" not in wildcard.names and wildcard.any_host and wildcard.local_routing


def test_policy_checks() -> None:
    policy = GatePolicy.for_port(Settings(api_key="k"), proxy=True)
    policy.check(_scope(host="abc.local", authorization="Bearer k"))
    policy.check(_scope(host="localhost:9443", origin="http://localhost:9443", authorization="bearer  k"))
    for bad in (_scope(host="abc.local:9443", authorization="Bearer k"), _scope(authorization="Bearer k"),
                _scope(host="localhost", origin="null", authorization="Bearer k"),
                _scope(host="localhost", origin="http://user@localhost", authorization="Bearer k")):
        with pytest.raises(HostNotAllowed):
            policy.check(bad)
    for bad in (_scope(host="localhost"), _scope(host="localhost", authorization="Bearer kk"),
                _scope(host="localhost", authorization="Token k")):
        with pytest.raises(Unauthorized):
            policy.check(bad)
    api = GatePolicy.for_port(Settings(api_key="k"), proxy=False)
    api.check({"type": "http", "path": "/healthz", "headers": [(b"host", b"localhost")]})
    with pytest.raises(HostNotAllowed):
        api.check(_scope(host="abc.local", authorization="Bearer k"))


def test_star_turns_host_and_origin_checks_off_but_not_the_key() -> None:
    policy = GatePolicy.for_port(Settings(allowed_hosts="*", api_key="k"), proxy=False)
    policy.check(_scope(host="anything.example", origin="http://other.example", authorization="Bearer k"))
    with pytest.raises(Unauthorized):
        policy.check(_scope(host="anything.example"))

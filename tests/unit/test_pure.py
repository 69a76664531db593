"""Unit tests of pure logic: routing, settings, names."""

from __future__ import annotations

import pytest

from emulator.config import Settings, env_help
from emulator.errors import MissingSandboxId
from emulator.model.ids import new_sandbox_id, valid_name
from emulator.proxy.app import routing_value


def test_routing_prefers_explicit_header() -> None:
    assert routing_value({b"x-tensorlake-sandbox-id": b"abc", b"host": b"zzz.local"}) == "abc"


@pytest.mark.parametrize("host, expected", [(b"abc123.local", "abc123"), (b"my-env.local:9443", "my-env"),
                                            (b"ABC.LOCAL", "abc")])
def test_routing_from_host(host: bytes, expected: str) -> None:
    assert routing_value({b"host": host}) == expected


@pytest.mark.parametrize("host", [b"localhost:9443", b"", b".local", b"emulator:9443"])
def test_routing_missing(host: bytes) -> None:
    with pytest.raises(MissingSandboxId):
        routing_value({b"host": host})


def test_settings_from_env() -> None:
    s = Settings.from_env({"TLE_API_PORT": "1234", "TLE_TERMINATE_ON_EXIT": "yes", "TLE_DATA_DIR": "/x"})
    assert s.api_port == 1234 and s.terminate_on_exit is True and str(s.data_dir) == "/x"
    assert s.advertised_proxy_url == "http://localhost:9443"
    assert "TLE_RUNTIME" in env_help()


def test_ids_are_dns_labels_and_names_validated() -> None:
    sid = new_sandbox_id()
    assert len(sid) == 20 and sid.isalnum() and sid.lower() == sid
    assert valid_name("my-env") and valid_name("A_1")
    assert not valid_name("bad name") and not valid_name("-x") and not valid_name("a.b") and not valid_name("x" * 64)


@pytest.mark.parametrize("var, value, accepted", [
    ("TLE_API_PORT", "http", "valid integer"), ("TLE_API_PORT", "70000", "less than or equal to 65535"),
    ("TLE_LOG_LEVEL", "loud", "'debug', 'info', 'warning' or 'error'"),
    ("TLE_CHECKPOINT", "criu", "'auto', 'runc', 'docker' or 'off'"),
    ("TLE_TERMINATE_ON_EXIT", "maybe", "valid boolean"), ("TLE_STARTUP_TIMEOUT", "-1", "greater than 0"),
])
def test_a_bad_variable_stops_with_one_line_naming_it(var: str, value: str, accepted: str) -> None:
    from emulator.config import ConfigError

    with pytest.raises(ConfigError) as err:
        Settings.from_env({var: value})
    message = str(err.value)
    assert "\n" not in message and var in message and repr(value) in message and accepted in message
    assert isinstance(err.value, SystemExit)


def test_settings_defaults_are_written_once_and_empty_means_default() -> None:
    s = Settings.from_env({"TLE_API_PORT": "", "TLE_TERMINATE_ON_EXIT": "yes", "TLE_STARTUP_TIMEOUT": "2.5"})
    assert (s.api_port, s.terminate_on_exit, s.startup_timeout) == (8900, True, 2.5)
    assert Settings.from_env({}) == Settings()
    assert "TLE_API_PORT" in env_help() and "[default: 8900]" in env_help()

"""The egress rule set and policy parsing (emulator/backend/egress.py, emulator/manager/egress.py):
pure functions, no container. The rules in force are tested end to end in tests/test_egress.py."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from emulator.backend.egress import EgressRules, ruleset
from emulator.errors import BadRequest
from emulator.manager import egress

net = ipaddress.ip_network
DNS = (net("10.255.255.53/32"),)


def _out(rules: EgressRules, version: int = 4) -> list[str]:
    return [ln for ln in ruleset(rules, version).splitlines() if ln.startswith("-A OUTPUT")]


def test_unrestricted_is_an_empty_chain() -> None:
    assert _out(EgressRules(resolvers=DNS)) == []
    assert ruleset(EgressRules(), 4).splitlines()[-1] == "COMMIT"


def test_no_internet_rejects_all_but_loopback_and_established() -> None:
    assert _out(EgressRules(allow_internet_access=False, resolvers=DNS)) == [
        "-A OUTPUT -o lo -j ACCEPT",
        "-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A OUTPUT -j REJECT --reject-with icmp-admin-prohibited",
    ]


def test_deny_before_dns_before_allow_then_default_reject() -> None:
    rules = EgressRules(allow=(net("10.0.0.0/8"),), deny=(net("10.1.2.3/32"), net("10.255.255.53/32")),
                        resolvers=DNS)
    out = _out(rules)
    assert out.index("-A OUTPUT -d 10.1.2.3/32 -j REJECT --reject-with icmp-admin-prohibited") < \
        out.index("-A OUTPUT -d 10.255.255.53/32 -p udp --dport 53 -j ACCEPT") < \
        out.index("-A OUTPUT -d 10.0.0.0/8 -j ACCEPT")
    assert out[-1] == "-A OUTPUT -j REJECT --reject-with icmp-admin-prohibited"


def test_dns_only_with_internet_access_and_an_allow_list() -> None:
    assert not [r for r in _out(EgressRules(False, allow=(net("1.2.3.4/32"),), resolvers=DNS)) if "53" in r]
    assert not [r for r in _out(EgressRules(True, deny=(net("1.2.3.4/32"),), resolvers=DNS)) if "53" in r]
    deny_only = _out(EgressRules(True, deny=(net("1.2.3.4/32"),)))
    assert deny_only[-1].endswith("-d 1.2.3.4/32 -j REJECT --reject-with icmp-admin-prohibited")  # rest open


def test_families_are_split() -> None:
    rules = EgressRules(False, allow=(net("10.0.0.0/8"), net("fd00::/8")))
    assert "-A OUTPUT -d fd00::/8 -j ACCEPT" in _out(rules, 6)
    assert not [r for r in _out(rules, 6) if "10.0.0.0" in r]
    assert _out(rules, 6)[-1] == "-A OUTPUT -j REJECT --reject-with icmp6-adm-prohibited"


def test_resolve_literals_ports_and_localhost() -> None:
    policy = {"allow_internet_access": False, "allow_out": ["10.1.2.3:8080", "10.0.0.0/8", "localhost", "fd00::1"],
              "deny_out": ["10.1.2.0/24"]}
    rules = asyncio.run(egress.resolve(policy))
    assert not rules.allow_internet_access
    assert net("10.1.2.3/32") in rules.allow and net("10.0.0.0/8") in rules.allow
    assert net("127.0.0.1/32") in rules.allow and net("fd00::1/128") in rules.allow
    assert rules.deny == (net("10.1.2.0/24"),)


def test_unresolvable_name_is_a_bad_request(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_host(host: str) -> list:
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(egress, "_lookup", no_such_host)  # no DNS query leaves the test
    with pytest.raises(BadRequest, match="does not resolve"):
        asyncio.run(egress.resolve({"allow_out": ["example.invalid"]}))


def test_restricted_and_offline_only() -> None:
    assert not egress.restricted(None) and not egress.restricted({"allow_internet_access": True,
                                                                  "allow_out": [], "deny_out": []})
    assert egress.restricted({"deny_out": ["1.2.3.4"]})
    assert egress.offline_only({"allow_internet_access": False, "allow_out": []})
    assert not egress.offline_only({"allow_internet_access": False, "allow_out": ["1.2.3.4"]})

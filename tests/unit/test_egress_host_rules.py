"""The host-side egress chains of gVisor sandboxes on gVisor's own network stack (emulator/backend/egress_host.py):
the pure parts, no iptables. The rules in force are tested end to end in tests/test_gvisor_egress.py and, under
TLE_TEST_RUNTIME=runsc, tests/test_egress.py."""

from __future__ import annotations

import ipaddress

from emulator.backend import egress_host
from emulator.backend.egress import EgressRules
from emulator.backend.egress_host import PARENT, Addresses, addresses_of, chain_name, chain_rules, jump_rules

net = ipaddress.ip_network
DNS = (net("10.255.255.53/32"),)
C = "TLE-E-0123abcd-0123456789abc"
REJECT = "-j REJECT --reject-with icmp-host-unreachable"


def test_chain_name_fits_iptables_and_keys_instance_and_sandbox() -> None:
    a = chain_name("0123abcd" + "9" * 8, "sb-one")
    assert len(a) <= 28 and a.startswith("TLE-E-0123abcd-")
    assert a != chain_name("0123abcd" + "9" * 8, "sb-two") and a != chain_name("ffffffff" + "9" * 8, "sb-one")
    assert a == chain_name("0123abcd" + "9" * 8, "sb-one")


def test_same_order_as_in_namespace_with_return_for_allowed() -> None:
    rules = EgressRules(allow=(net("10.0.0.0/8"),), deny=(net("10.1.2.3/32"),), resolvers=DNS)
    assert chain_rules(C, rules, 4) == [
        f"-A {C} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        f"-A {C} -d 10.1.2.3/32 {REJECT}",
        f"-A {C} -d 10.255.255.53/32 -p udp --dport 53 -j RETURN",
        f"-A {C} -d 10.255.255.53/32 -p tcp --dport 53 -j RETURN",
        f"-A {C} -d 10.0.0.0/8 -j RETURN",
        f"-A {C} {REJECT}",
    ]


def test_no_internet_rejects_all_and_deny_only_leaves_the_rest_to_docker() -> None:
    assert chain_rules(C, EgressRules(allow_internet_access=False, resolvers=DNS), 4)[-1] == f"-A {C} {REJECT}"
    assert not [r for r in chain_rules(C, EgressRules(False, allow=(net("1.2.3.4/32"),), resolvers=DNS), 4)
                if "53" in r]  # no DNS without internet access
    deny_only = chain_rules(C, EgressRules(deny=(net("1.2.3.4/32"),), resolvers=DNS), 4)
    assert deny_only[-1] == f"-A {C} -d 1.2.3.4/32 {REJECT}"  # the rest goes on through Docker's rules


def test_families_split() -> None:
    rules = EgressRules(allow=(net("10.0.0.0/8"), net("fd00::/8")), deny=(net("fd00::1/128"),))
    v6 = chain_rules(C, rules, 6)
    assert f"-A {C} -d fd00::1/128 -j REJECT --reject-with icmp6-no-route" in v6
    assert not [r for r in v6 if "10.0.0.0" in r] and not [r for r in chain_rules(C, rules, 4) if "fd00" in r]


def test_jumps_by_ipv4_source_and_by_mac_for_ipv6() -> None:
    addrs = Addresses(ipv4=("172.17.0.5", "172.30.0.2"), macs=("02:42:ac:11:00:05",))
    assert jump_rules(C, "sb1", addrs, 4) == [
        f'-A {PARENT} -s 172.17.0.5/32 -m comment --comment "tle-egress sandbox sb1" -j {C}',
        f'-A {PARENT} -s 172.30.0.2/32 -m comment --comment "tle-egress sandbox sb1" -j {C}',
    ]
    assert jump_rules(C, "sb1", addrs, 6) == [
        f'-A {PARENT} -m mac --mac-source 02:42:ac:11:00:05 -m comment --comment "tle-egress sandbox sb1" -j {C}']


def test_addresses_from_docker_inspect() -> None:
    nets = {"bridge": {"IPAddress": "172.17.0.5", "MacAddress": "02:42:AC:11:00:05"},
            "internal": {"IPAddress": "172.30.0.2", "MacAddress": "02:42:ac:1e:00:02"},
            "none": {"IPAddress": "", "MacAddress": ""}}
    assert addresses_of(nets) == Addresses(("172.17.0.5", "172.30.0.2"), ("02:42:ac:11:00:05", "02:42:ac:1e:00:02"))
    assert addresses_of(None) == Addresses()


def test_removal_lines_match_only_the_sandboxes_jumps() -> None:
    table = ["-N TLE-EGRESS", f"-N {C}", "-A DOCKER-USER -j TLE-EGRESS", "-A DOCKER-USER -j RETURN",
             f'-A TLE-EGRESS -s 172.17.0.5/32 -m comment --comment "tle-egress sandbox sb1" -j {C}',
             '-A TLE-EGRESS -s 172.17.0.6/32 -m comment --comment "tle-egress sandbox sb2" -j TLE-E-0123abcd-x']
    assert egress_host._jumps_to(table, C) == [
        f'-D TLE-EGRESS -s 172.17.0.5/32 -m comment --comment "tle-egress sandbox sb1" -j {C}']


def test_owners_of_chains_from_the_table() -> None:
    other = "TLE-E-ffffffff-0000000000000"
    table = ["-N TLE-EGRESS", f"-N {C}", f"-N {other}", "-N DOCKER-USER", "-A DOCKER-USER -j RETURN",
             f'-A TLE-EGRESS -s 172.17.0.5/32 -m comment --comment "tle-egress sandbox sb1" -j {C}',
             f'-A TLE-EGRESS -s 172.30.0.2/32 -m comment --comment "tle-egress sandbox sb1" -j {C}',
             f'-A TLE-EGRESS -m mac --mac-source 02:42:AC:11:00:05 -m comment --comment "tle-egress sandbox sb1" '
             f'-j {C}']
    owners = egress_host._owners(table)
    assert owners[C] == ("sb1", {"172.17.0.5", "172.30.0.2", "02:42:ac:11:00:05"})
    assert owners[other] == ("", set())  # a chain without jumps: nothing to keep it
    assert "DOCKER-USER" not in owners and "TLE-EGRESS" not in owners

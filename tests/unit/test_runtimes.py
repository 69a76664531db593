"""The runtime suffix of an image name (emulator/model/runtimes.py) and the gVisor listener check
(emulator/agent_channel.py) against real host processes."""

from __future__ import annotations

import os

import pytest

from emulator.agent_channel import AgentPids, is_gvisor_listener
from emulator.errors import BadRequest
from emulator.model.runtimes import (
    GVISOR_CHECKPOINTABLE,
    RUNSC_NETSTACK,
    RUNSC_NONET,
    describe,
    docker_runtime,
    image_runtime,
    split_image,
    used_runtime,
)


@pytest.mark.parametrize(("image", "want"), [
    ("tensorlake/ubuntu-minimal", ("tensorlake/ubuntu-minimal", None)),
    ("python:3.12+runsc", ("python:3.12", "runsc")),
    ("python:3.12+gvisor", ("python:3.12", "runsc")),
    ("reg.local:5000/x/y:tag+runc", ("reg.local:5000/x/y:tag", "runc")),
    ("img+RUNSC", ("img", "runsc")),
])
def test_split_image(image: str, want: tuple[str, str | None]) -> None:
    assert split_image(image) == want


@pytest.mark.parametrize("image", ["img+kata", "+runsc", "img+"])
def test_unknown_suffix_is_a_clear_400(image: str) -> None:
    with pytest.raises(BadRequest) as err:
        split_image(image)
    assert "+runsc" in err.value.message


def test_default_applies_without_suffix() -> None:
    assert image_runtime("img", "runsc") == ("img", "runsc")
    assert image_runtime("img+runc", "runsc") == ("img", "runc")


def test_describe_lists_both_and_what_gvisor_lacks() -> None:
    d = describe(["runc", "runsc"], "runc", criu_ok=True)
    assert d["runc"]["default"] and d["runsc"]["installed"]
    assert d["runc"]["supports"]["memory_snapshots"] is True  # type: ignore[index]
    assert d["runsc"]["supports"]["memory_snapshots"] is False  # type: ignore[index]
    assert describe(["runc"], "runc", criu_ok=False)["runsc"]["installed"] is False


@pytest.mark.parametrize(("runtime", "policy", "have", "want"), [
    ("runc", None, GVISOR_CHECKPOINTABLE, "runc"),
    ("runsc", None, GVISOR_CHECKPOINTABLE, RUNSC_NETSTACK),
    ("runsc", {"allow_internet_access": True, "allow_out": [], "deny_out": []}, GVISOR_CHECKPOINTABLE, RUNSC_NETSTACK),
    ("runsc", {"allow_internet_access": False}, GVISOR_CHECKPOINTABLE, RUNSC_NONET),
    ("runsc", {"deny_out": ["10.0.0.1"]}, GVISOR_CHECKPOINTABLE, "runsc"),  # rules: iptables, host networking
    ("runsc", {"allow_internet_access": False, "allow_out": ["10.0.0.1"]}, GVISOR_CHECKPOINTABLE, "runsc"),
    ("runsc", None, (RUNSC_NONET,), "runsc"),  # Docker without runsc-netstack: host networking as before
    ("runsc", {"allow_internet_access": False}, (), "runsc"),  # gVisor checkpoints off
])
def test_docker_runtime_by_policy(runtime: str, policy: dict | None, have: tuple[str, ...], want: str) -> None:
    assert docker_runtime(runtime, policy, have) == want


@pytest.mark.parametrize(("policy", "have", "want"), [
    ({"deny_out": ["10.0.0.1"]}, GVISOR_CHECKPOINTABLE, RUNSC_NETSTACK),  # rules enforced on the host
    ({"allow_internet_access": False, "allow_out": ["10.0.0.1"]}, GVISOR_CHECKPOINTABLE, RUNSC_NETSTACK),
    ({"allow_internet_access": False}, GVISOR_CHECKPOINTABLE, RUNSC_NONET),  # still no interface at all
    ({"allow_internet_access": False}, (RUNSC_NETSTACK,), RUNSC_NETSTACK),  # no runsc-nonet: a REJECT-all chain
    ({"allow_out": ["10.0.0.1"]}, (RUNSC_NONET,), "runsc"),  # no runsc-netstack: host networking as before
])
def test_docker_runtime_with_host_rules(policy: dict, have: tuple[str, ...], want: str) -> None:
    assert docker_runtime("runsc", policy, have, host_rules=True) == want
    assert docker_runtime("runc", policy, have, host_rules=True) == "runc"


def test_records_before_docker_runtime() -> None:
    assert used_runtime(None, {"allow_internet_access": False}) == RUNSC_NONET
    assert used_runtime(None, None) == "runsc"
    assert used_runtime(RUNSC_NETSTACK, None) == RUNSC_NETSTACK


def test_describe_says_which_gvisor_sandboxes_checkpoint() -> None:
    both = describe(["runc", "runsc"], "runc", criu_ok=True, gvisor_runtimes=GVISOR_CHECKPOINTABLE)
    assert "allow_out" in both["runsc"]["supports"]["suspend_resume"]  # type: ignore[index,operator]
    nonet = describe(["runc", "runsc"], "runc", criu_ok=True, gvisor_runtimes=(RUNSC_NONET,))
    assert nonet["runsc"]["supports"]["memory_snapshots"] == "without internet access"  # type: ignore[index]
    host = describe(["runc", "runsc"], "runc", criu_ok=True, gvisor_runtimes=GVISOR_CHECKPOINTABLE, host_rules=True)
    assert host["runsc"]["supports"]["suspend_resume"] is True  # type: ignore[index]
    assert "enforced on the host" in str(host["runsc"]["notes"])


def test_a_plain_host_process_is_never_a_gvisor_listener() -> None:
    # this test process is not runsc-sandbox: the gVisor rule never applies (runc's check stays as is)
    assert not is_gvisor_listener(os.getpid(), os.getpid(), "c" * 64)
    assert not is_gvisor_listener(os.getppid(), os.getpid(), "c" * 64)


async def test_runc_check_unchanged_for_a_non_runsc_pid1() -> None:
    async def lookup(_: str) -> int:
        return os.getpid()

    pids = AgentPids(lookup)
    assert await pids.is_agent("cid", os.getpid())
    assert not await pids.is_agent("cid", os.getppid())

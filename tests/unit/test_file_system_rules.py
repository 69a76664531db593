"""The mount rules of model/file_systems.py: what the SDK checks locally, answered the same way by the
server, plus the path rules a container mount needs (no emulator, no Docker)."""

from __future__ import annotations

import pytest

from emulator.errors import BadRequest
from emulator.model import file_systems as fsm


def test_a_mount_comes_back_in_the_sdks_wire_shape() -> None:
    assert fsm.normalise_mount({"file_system_id": "d", "mount_path": "/mnt/d/", "read_only": False,
                                "prefetch": True, "owner": "1000:1000"}) == \
        {"file_system_id": "d", "mount_path": "/mnt/d", "prefetch": True, "owner": "1000:1000"}
    assert fsm.normalise_mount({"file_system_id": "d", "mount_path": "/x", "read_only": True}) == \
        {"file_system_id": "d", "mount_path": "/x", "read_only": True}


@pytest.mark.parametrize("path", ["relative", "", "/", "/a/../b", "/a//b", "/.tle", "/.tle/agent", "/proc",
                                  "/sys/fs", "/dev/shm", "/a\x00b"])
def test_bad_mount_paths_are_refused(path: str) -> None:
    with pytest.raises(BadRequest):
        fsm.check_mount_path(path)


@pytest.mark.parametrize("path", ["/mnt/data", "/data", "/home/user/work", "/tle", "/devices", "/procs"])
def test_good_mount_paths_pass(path: str) -> None:
    assert fsm.check_mount_path(path) == path


@pytest.mark.parametrize("owner", ["agent", "1001", "agent:staff", "1001:1001", "a.b-c_d"])
def test_owner_shapes_the_sdk_accepts(owner: str) -> None:
    fsm.check_owner(owner)


@pytest.mark.parametrize("owner", ["", "a:b:c", ":x", "x:", "has space", "quo'te", "4294967296", "1:4294967296",
                                   "x" * 257, 5])
def test_owner_shapes_the_sdk_refuses(owner: object) -> None:
    with pytest.raises(BadRequest):
        fsm.check_owner(owner)


def test_snapshot_pins_need_read_only_and_are_not_served() -> None:
    with pytest.raises(BadRequest, match="requires read_only"):
        fsm.normalise_mount({"file_system_id": "d", "mount_path": "/x", "snapshot_id": "s"})
    with pytest.raises(BadRequest, match="cannot pin"):
        fsm.normalise_mount({"file_system_id": "d", "mount_path": "/x", "snapshot_id": "s", "read_only": True})


def test_duplicate_mount_paths_within_a_list_and_against_existing_mounts() -> None:
    one = {"file_system_id": "d", "mount_path": "/x"}
    with pytest.raises(BadRequest, match="duplicate"):
        fsm.normalise_mounts([one, {"file_system_id": "e", "mount_path": "/x/"}], [])
    with pytest.raises(BadRequest, match="duplicate"):
        fsm.normalise_mounts([one], [{"file_system_id": "e", "mount_path": "/x"}])
    assert fsm.normalise_mounts([one], [{"file_system_id": "d", "mount_path": "/y"}]) == [one]


@pytest.mark.parametrize("name", ["", ".", "..", "-x", "a/b", "a b", "x" * 129])
def test_bad_names(name: str) -> None:
    with pytest.raises(BadRequest):
        fsm.check_name(name)


def test_repo_shape() -> None:
    rec = fsm.FileSystemRecord(name="data", project="default")
    assert rec.repo() == {"name": "data", "full_name": "default/data", "default_branch": "main",
                          "status": "active", "kind": "filesystem"}

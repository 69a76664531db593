"""File systems (issue 15, docs/protocol.md §6.9) with the pinned SDK against a real emulator and real
containers: the registry (`create_file_system`, `list_file_systems`, `delete_file_system` through the
Artifact Storage API), mounts at create, attach/detach on a running sandbox (sync and async),
read-only mounts failing with EROFS, sharing between sandboxes, data outliving sandboxes, delete
refused while mounted, pool claims with mounts, the server-side mount checks, reset, and restart
survival."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from tensorlake.filesystem import FilesystemAPIError, FilesystemClient
from tensorlake.sandbox import AsyncSandbox, CheckpointType, Sandbox, SandboxClient
from tensorlake.sandbox.exceptions import SandboxError
from tensorlake.sandbox.file_system import create_file_system, delete_file_system, list_file_systems
from tensorlake.sandbox.models import FileSystemMount

from emulator.manager.file_systems import INJECT_SCRIPT as INJECT
from sdk_shim.launcher import EmulatorProcess, free_port

T = 60.0


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK's file-system client refuses to run without an API key; the emulator accepts any.
    monkeypatch.setenv("TENSORLAKE_API_KEY", "tle-test-key")


def _name() -> str:
    return f"fs-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def fs_name(emulator: EmulatorProcess) -> Iterator[str]:
    name = _name()
    create_file_system(name)
    yield name
    try:
        delete_file_system(name)
    except SandboxError:
        pass  # the test deleted it


def _sh(sb: Sandbox, script: str) -> tuple[int, str]:
    res = sb.run("sh", ["-c", script])
    return res.exit_code, (res.stdout + res.stderr).strip()


def _http(method: str, url: str, body: object = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_registry_create_list_delete(emulator: EmulatorProcess) -> None:
    name = _name()
    fs = create_file_system(name)
    assert (fs.id, fs.name, fs.status) == (name, name, "ready")
    listed = {f.id: f for f in list_file_systems()}
    assert name in listed and listed[name].status == "active"
    with pytest.raises(SandboxError, match="already exists"):
        create_file_system(name)
    client = FilesystemClient()
    assert client.get(name).name == name
    # the file API from outside a sandbox is not served: a clear 501
    with pytest.raises(FilesystemAPIError, match="does not serve the Artifact Storage file API") as err:
        client.get(name).read_file("a.txt")
    assert err.value.status_code == 501
    delete_file_system(name)
    assert name not in {f.id for f in list_file_systems()}
    with pytest.raises(SandboxError, match="not found"):
        delete_file_system(name)
    with pytest.raises(SandboxError, match="path separator"):
        create_file_system("bad/name")  # refused by the SDK itself
    # a name the SDK lets through but the emulator cannot use as a folder: the SDK's error shape
    code, body = _http("POST", f"{emulator.api_url}/project/default/repos/-dash", {"kind": "filesystem"})
    assert code == 400 and "invalid file system name" in body["error"]
    code, body = _http("GET", f"{emulator.api_url}/project/other/repos")
    assert code == 404 and "project" in body["error"]


def test_mounts_at_create_read_only_shared_and_outliving(emulator: EmulatorProcess, fs_name: str) -> None:
    mounts = [FileSystemMount(file_system_id=fs_name, mount_path="/mnt/data"),
              FileSystemMount(file_system_id=fs_name, mount_path="/mnt/ro", read_only=True)]
    a = Sandbox.create(file_systems=mounts, request_timeout=T)
    b = Sandbox.create(request_timeout=T)
    try:
        assert [(m.file_system_id, m.mount_path, m.read_only) for m in a.list_file_systems()] == \
            [(fs_name, "/mnt/data", False), (fs_name, "/mnt/ro", True)]
        # the dashboard's listing (api/ui.py) names the sandbox that mounts it
        with urllib.request.urlopen(f"{emulator.api_url}/emulator/file-systems", timeout=10) as r:
            listed = {f["name"]: f for f in json.loads(r.read())["file_systems"]}
        assert listed[fs_name]["mounted_by"] == [a.sandbox_id]
        assert _sh(a, "echo hello > /mnt/data/greeting.txt")[0] == 0
        code, out = _sh(a, "echo no > /mnt/ro/x.txt")
        assert code != 0 and "Read-only file system" in out
        assert _sh(a, "cat /mnt/ro/greeting.txt") == (0, "hello")  # same data, read-only view
        # attach to a running sandbox at any path: it sees the other sandbox's writes, and they see its
        info = b.attach_file_system(fs_name, "/srv/shared/data").value
        assert [m.mount_path for m in info.file_systems] == ["/srv/shared/data"]
        assert _sh(b, "cat /srv/shared/data/greeting.txt") == (0, "hello")
        assert _sh(b, "echo from-b > /srv/shared/data/b.txt")[0] == 0
        assert _sh(a, "cat /mnt/data/b.txt") == (0, "from-b")
        # the sandbox cannot undo the mount itself (no CAP_SYS_ADMIN)
        assert _sh(b, "umount /srv/shared/data")[0] != 0
        # delete is refused while mounted
        with pytest.raises(SandboxError, match="mounted in sandbox"):
            delete_file_system(fs_name)
        # detach unmounts and keeps the data
        assert b.detach_file_system("/srv/shared/data").value.file_systems == []
        assert _sh(b, "ls /srv/shared/data") == (0, "")
        assert _sh(a, "cat /mnt/data/b.txt") == (0, "from-b")
    finally:
        a.terminate()
        b.terminate()
    # the data outlives the sandboxes
    c = Sandbox.create(file_systems=[FileSystemMount(file_system_id=fs_name, mount_path="/data")], request_timeout=T)
    try:
        assert _sh(c, "cat /data/greeting.txt /data/b.txt") == (0, "hello\nfrom-b")
    finally:
        c.terminate()
    delete_file_system(fs_name)  # no live sandbox mounts it now


async def test_attach_detach_async(emulator: EmulatorProcess, fs_name: str) -> None:
    # an entrypoint keeps the create off the warm reserve: the mount goes in during a cold launch
    sb = await AsyncSandbox.create(file_systems=[FileSystemMount(file_system_id=fs_name, mount_path="/mnt/a")],
                                   entrypoint=["sleep", "300"], request_timeout=T)
    try:
        await sb.attach_file_system(fs_name, "/mnt/b", read_only=True)
        mounts = await sb.list_file_systems()
        assert [(m.mount_path, m.read_only) for m in mounts] == [("/mnt/a", False), ("/mnt/b", True)]
        res = await sb.run("sh", ["-c", "echo x > /mnt/a/f && cat /mnt/b/f && ! touch /mnt/b/g"])
        assert res.exit_code == 0 and res.stdout.strip() == "x"
        await sb.detach_file_system("/mnt/a")
        assert [m.mount_path for m in await sb.list_file_systems()] == ["/mnt/b"]
    finally:
        await sb.terminate()


def test_server_checks_what_the_sdk_checks(emulator: EmulatorProcess, fs_name: str) -> None:
    url = f"{emulator.api_url}/v1/namespaces/default/sandboxes"
    bad = [
        ([{"file_system_id": fs_name, "mount_path": "/m"}, {"file_system_id": fs_name, "mount_path": "/m"}],
         400, "duplicate mount_path"),
        ([{"file_system_id": fs_name, "mount_path": "/m", "snapshot_id": "s1"}], 400, "requires read_only"),
        ([{"file_system_id": fs_name, "mount_path": "/m", "owner": "a:b:c"}], 400, "owner must be"),
        ([{"file_system_id": fs_name, "mount_path": "relative"}], 400, "absolute"),
        ([{"file_system_id": fs_name, "mount_path": "/proc/x"}], 400, "reserved"),
        ([{"file_system_id": "nope-" + fs_name, "mount_path": "/m"}], 400, "not found"),
    ]
    for mounts, status, text in bad:
        code, body = _http("POST", url, {"resources": {"cpus": 1.0, "memory_mb": 256}, "file_systems": mounts})
        assert code == status and text in body["error"], (mounts, code, body)
    code, body = _http("POST", f"{url}/no-such-sandbox/file_systems", {"file_system_id": fs_name, "mount_path": "/m"})
    assert code == 404
    sb = Sandbox.create(request_timeout=T)
    try:
        sb.attach_file_system(fs_name, "/m")
        with pytest.raises(SandboxError, match="duplicate mount_path"):
            sb.attach_file_system(fs_name, "/m")
        with pytest.raises(SandboxError, match="no file system is mounted"):
            sb.detach_file_system("/elsewhere")
        with pytest.raises(SandboxError, match=f"file system 'nope-{fs_name}' not found"):
            sb.attach_file_system("nope-" + fs_name, "/n")
        sb.attach_file_system(fs_name, "/owned", owner="1234:4321")
        assert _sh(sb, "stat -c %u:%g /owned") == (0, "1234:4321")
    finally:
        sb.terminate()


def test_pool_claim_with_mounts(emulator: EmulatorProcess, fs_name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = SandboxClient(api_url=emulator.api_url, request_timeout=T)
    pool_id = client.create_pool(image="tensorlake/ubuntu-minimal", cpus=1.0, memory_mb=256,
                                 warm_containers=1).pool_id
    try:
        sb = Sandbox.create(pool_id=pool_id, file_systems=[FileSystemMount(file_system_id=fs_name,
                                                                           mount_path="/claimed")],
                            request_timeout=T)
        try:
            assert [m.mount_path for m in sb.list_file_systems()] == ["/claimed"]
            assert _sh(sb, "echo c > /claimed/c && cat /claimed/c") == (0, "c")
        finally:
            sb.terminate()
    finally:
        client.delete_pool(pool_id)
        client.close()


def test_reset_of_a_session_deletes_its_file_systems(emulator: EmulatorProcess) -> None:
    label = f"fs-session-{uuid.uuid4().hex[:8]}"
    name = _name()
    req = urllib.request.Request(f"{emulator.api_url}/project/default/repos/{name}", method="POST",
                                 data=b'{"default_branch":"main","kind":"filesystem"}',
                                 headers={"content-type": "application/json", "x-tle-session": label})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 201
    keep = _name()
    create_file_system(keep)
    try:
        code, report = _http("POST", f"{emulator.api_url}/emulator/reset?session={label}")
        assert code == 200 and report["file_systems"] == [name], report
        names = {f.id for f in list_file_systems()}
        assert name not in names and keep in names
    finally:
        delete_file_system(keep)


def test_file_systems_and_their_data_survive_a_restart() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tle-fs-restart-", dir="/tmp"))
    api_port, proxy_port = free_port(), free_port()
    keep = {"TLE_TERMINATE_ON_EXIT": "0"}  # the first sandbox stays up across the restart, mount and all
    first = EmulatorProcess(data_dir=data_dir, api_port=api_port, proxy_port=proxy_port, extra_env=keep).start()
    name = _name()
    try:
        fsc = FilesystemClient(api_url=first.api_url)
        fsc.create(name)
        sb = Sandbox.create(api_url=first.api_url, file_systems=[FileSystemMount(file_system_id=name,
                                                                                 mount_path="/d")],
                            request_timeout=T)
        assert _sh(sb, "echo kept > /d/k")[0] == 0
        sb_id = sb.sandbox_id
    finally:
        first.stop()
    # As a crash between a dump's unmount and its remount would leave it: mounted on record, not in the
    # container. Start-up puts it back.
    pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", f"tle-{sb_id}"], capture_output=True,
                         text=True, check=True).stdout.strip()
    subprocess.run([sys.executable, "-I", str(INJECT), "detach", pid, "/d"], check=True)
    second = EmulatorProcess(data_dir=data_dir, api_port=api_port, proxy_port=proxy_port).start()
    try:
        fsc = FilesystemClient(api_url=second.api_url)
        assert name in [f.name for f in fsc.list()]
        sb2 = Sandbox.create(api_url=second.api_url, file_systems=[FileSystemMount(file_system_id=name,
                                                                                   mount_path="/again")],
                             request_timeout=T)
        try:
            assert _sh(sb2, "cat /again/k") == (0, "kept")
        finally:
            sb2.terminate()
        with pytest.raises(FilesystemAPIError) as err:
            fsc.delete(name)  # still mounted by the first sandbox, which the restart kept running
        assert err.value.status_code == 409
        kept = Sandbox.connect(sb_id, api_url=second.api_url, request_timeout=T)
        assert _sh(kept, "cat /d/k") == (0, "kept")
        kept.terminate()
        fsc.delete(name)
    finally:
        second.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_suspend_and_resume_keep_the_mounts(emulator: EmulatorProcess, fs_name: str) -> None:
    sb = Sandbox.create(name=f"fs-susp-{uuid.uuid4().hex[:6]}", request_timeout=T,
                        file_systems=[FileSystemMount(file_system_id=fs_name, mount_path="/d"),
                                      FileSystemMount(file_system_id=fs_name, mount_path="/r", read_only=True)])
    try:
        assert _sh(sb, "echo before > /d/x")[0] == 0
        sb.suspend()
        sb.resume()
        assert _sh(sb, "cat /d/x && echo after > /d/y && cat /r/y") == (0, "before\nafter")
        code, out = _sh(sb, "touch /r/z")
        assert code != 0 and "Read-only file system" in out
        assert [m.mount_path for m in sb.list_file_systems()] == ["/d", "/r"]
        # a copy (a transient snapshot restored) gets the mounts too
        (entry,) = sb.copy(times=1).value.sandboxes
        twin = Sandbox.connect(entry.sandbox_id, request_timeout=T)
        try:
            assert [m.mount_path for m in twin.list_file_systems()] == ["/d", "/r"]
            assert _sh(twin, "cat /d/y") == (0, "after")
        finally:
            twin.terminate()
    finally:
        sb.terminate()


async def test_checkpoint_restores_the_mounts_but_not_their_data(emulator: EmulatorProcess, fs_name: str) -> None:
    sb = await AsyncSandbox.create(file_systems=[FileSystemMount(file_system_id=fs_name, mount_path="/d")],
                                   request_timeout=T)
    copies: list[AsyncSandbox] = []
    try:
        assert (await sb.run("sh", ["-c", "echo one > /d/f && echo rootfs > /root/r"])).exit_code == 0
        memory = await sb.checkpoint()
        files = await sb.checkpoint(checkpoint_type=CheckpointType.FILESYSTEM)
        # still mounted in the source after both dumps; a later write is what the copies see: the data
        # lives in the file system, not in the snapshot
        assert (await sb.run("sh", ["-c", "echo two > /d/f"])).exit_code == 0
        for snap in (memory, files):
            copy = await AsyncSandbox.create(snapshot_id=snap.snapshot_id, request_timeout=T)
            copies.append(copy)
            assert [m.mount_path for m in await copy.list_file_systems()] == ["/d"]
            res = await copy.run("sh", ["-c", "cat /d/f /root/r"])
            assert res.stdout.split() == ["two", "rootfs"]
        # a copy restored with `file_systems: []` (the SDK omits an empty list) has the empty mount point only
        code, body = _http("POST", f"{emulator.api_url}/v1/namespaces/default/sandboxes",
                           {"snapshot_id": files.snapshot_id, "file_systems": []})
        assert code == 200, body
        bare = await AsyncSandbox.connect(body["sandbox_id"], request_timeout=T)
        copies.append(bare)
        assert await bare.list_file_systems() == []
        assert (await bare.run("ls", ["-A", "/d"])).stdout.strip() == ""
    finally:
        for c in copies:
            await c.terminate()
        await sb.terminate()

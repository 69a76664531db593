"""Lifecycle API (issue 3) with the real SDK against a real emulator and real containers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
from runtime_helpers import GVISOR, RUNTIME, host_cgroup_value
from tensorlake.sandbox import AsyncSandbox, Sandbox
from tensorlake.sandbox.exceptions import RemoteAPIError, SandboxError, SandboxNotFoundError

from sdk_shim.launcher import EmulatorProcess

T = 60.0  # request_timeout for every SDK call


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _docker_inspect(container_name: str) -> dict:
    out = subprocess.run(["docker", "inspect", container_name], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


def test_create_run_terminate_sync(emulator: EmulatorProcess) -> None:
    sb = Sandbox.create(cpus=1.0, memory_mb=512, request_timeout=T)
    try:
        assert sb.status == "running"
        info = sb.info()
        assert info.resources.cpus == 1.0 and info.resources.memory_mb == 512
        assert getattr(info, "runtime", RUNTIME) == RUNTIME  # the runtime under test (runtime_helpers)
        assert sb.run("python", ["-c", "print('hello')"]).stdout.strip() == "hello"
        c = _docker_inspect(f"tle-{sb.sandbox_id}")
        hc = c["HostConfig"]
        assert hc["NanoCpus"] == 1_000_000_000 and hc["Memory"] == 512 * 1024 * 1024
        assert hc["MemorySwap"] == hc["Memory"] and hc["PidsLimit"] > 0
        assert hc["Privileged"] is False and "no-new-privileges" in hc["SecurityOpt"]
        assert hc["CapDrop"] == ["ALL"]
        assert not any("docker.sock" in b for b in hc["Binds"])
        assert c["Config"]["Labels"]["dev.tensorlake-emulator.sandbox-id"] == sb.sandbox_id
    finally:
        sb.terminate()
    status, body = _http("GET", f"{emulator.api_url}/v1/namespaces/default/sandboxes/{sb.sandbox_id}")
    assert status == 200 and body["status"] == "terminated" and body["termination_reason"]
    assert body["sandbox_url"] is None
    assert subprocess.run(["docker", "inspect", f"tle-{sb.sandbox_id}"], capture_output=True).returncode != 0
    # terminate is idempotent
    status, _ = _http("DELETE", f"{emulator.api_url}/v1/namespaces/default/sandboxes/{sb.sandbox_id}")
    assert status == 200


def test_cgroup_limits_and_oom_keeps_sandbox(emulator: EmulatorProcess) -> None:
    with Sandbox.create(cpus=0.5, memory_mb=128, request_timeout=T) as sb:
        if GVISOR:  # the host's cgroup of the runsc sandbox process holds the limits (runtime_helpers)
            def cgroup(ctl: str, name: str) -> str:
                return host_cgroup_value(sb.sandbox_id, ctl, name)
        else:
            def cgroup(ctl: str, name: str) -> str:
                return sb.run("cat", [f"/sys/fs/cgroup/{ctl}/{name}"]).stdout.strip()
        assert int(cgroup("memory", "memory.limit_in_bytes")) == 128 * 1024 * 1024
        quota = int(cgroup("cpu", "cpu.cfs_quota_us"))
        period = int(cgroup("cpu", "cpu.cfs_period_us"))
        assert abs(quota / period - 0.5) < 0.01
        hog = ["-c", "b = bytearray(400 * 1024 * 1024); print(len(b))"]
        if GVISOR:
            # gVisor's memory lives in its one sandbox process: past the limit the host's OOM killer ends
            # the whole sandbox, not one process in it (docs/gvisor.md); the emulator records the end.
            with pytest.raises(SandboxError):
                sb.run("python3", hog, timeout=60)
            for _ in range(100):
                if sb.info().status == "terminated":
                    break
                time.sleep(0.1)
            info = sb.info()
            assert info.status == "terminated", info
            return
        res = sb.run("python3", hog, timeout=60)
        assert res.exit_code != 0
        assert sb.run("echo", ["still-up"]).stdout.strip() == "still-up"
        assert sb.status == "running"


def test_named_get_or_create_connect_and_conflict(emulator: EmulatorProcess) -> None:
    name = f"env-{_uid()}"
    sb = Sandbox.create(name=name, request_timeout=T)
    try:
        again = Sandbox.connect(name, request_timeout=T)
        assert again.sandbox_id == sb.sandbox_id
        attached = Sandbox.get_or_create(name, request_timeout=T)
        assert attached.sandbox_id == sb.sandbox_id
        with pytest.raises(RemoteAPIError) as err:
            Sandbox.create(name=name, request_timeout=T)
        assert "409" in str(err.value) or getattr(err.value, "status_code", None) == 409
        assert name in [s.name for s in Sandbox.list(request_timeout=T)]
    finally:
        sb.terminate()
    # the name is released on terminate
    sb2 = Sandbox.create(name=name, request_timeout=T)
    assert sb2.sandbox_id != sb.sandbox_id
    sb2.terminate()


def test_update_rename_ports_and_live_resize(emulator: EmulatorProcess) -> None:
    with Sandbox.create(cpus=1.0, memory_mb=256, request_timeout=T) as sb:
        new = f"renamed-{_uid()}"
        info = sb.update(name=new)
        assert info.name == new
        info = sb.update(exposed_ports=[8080], allow_unauthenticated_access=True)
        assert info.exposed_ports == [8080]
        info = sb.update(cpus=2.0, memory_mb=512, timeout=30)
        assert info.resources.cpus == 2.0 and info.resources.memory_mb == 512
        if GVISOR:  # resized through the host cgroup of the runsc sandbox process (backend/cgroup_resize.py)
            mem = host_cgroup_value(sb.sandbox_id, "memory", "memory.limit_in_bytes")
            quota = int(host_cgroup_value(sb.sandbox_id, "cpu", "cpu.cfs_quota_us"))
            assert quota == 2 * int(host_cgroup_value(sb.sandbox_id, "cpu", "cpu.cfs_period_us"))
        else:
            mem = sb.run("cat", ["/sys/fs/cgroup/memory/memory.limit_in_bytes"]).stdout.strip()
        assert int(mem) == 512 * 1024 * 1024


def test_no_network(emulator: EmulatorProcess) -> None:
    with Sandbox.create(allow_internet_access=False, request_timeout=T) as sb:
        # Egress is closed by rules in the sandbox's namespace (tests/test_egress.py probes them).
        pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", f"tle-{sb.sandbox_id}"],
                             capture_output=True, text=True, check=True).stdout.strip()
        rules = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "iptables", "-S", "OUTPUT"],
                               capture_output=True, text=True, check=True).stdout.splitlines()
        assert rules[-1] == "-A OUTPUT -j REJECT --reject-with icmp-admin-prohibited", rules
        assert sb.info().network_policy is not None


def test_wait_false_and_entrypoint(emulator: EmulatorProcess) -> None:
    pending = Sandbox.create(entrypoint=["sleep", "300"], wait=False, request_timeout=T)
    sb = pending.ready(timeout=60) if hasattr(pending, "ready") else pending
    try:
        procs = sb.list_processes()
        assert any(p.command == "sleep" for p in procs)
    finally:
        sb.terminate()


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"{not json", "Malformed JSON"),
        (b'{"resources": {"cpus": -1, "memory_mb": 512}}', "cpus"),
        (b'{"resources": {"cpus": 0, "memory_mb": 512}}', "cpus"),
        (b'{"resources": {"cpus": 1, "memory_mb": 0}}', "memory_mb"),
        (b'{"resources": {"cpus": 9999, "memory_mb": 512}}', "cpus"),
        (b'{"resources": {"cpus": 1, "memory_mb": 99999999}}', "memory_mb"),
        (b'{"image": "no-such-image:1"}', "no-such-image:1"),
        (b'{"timeout_secs": "soon"}', "timeout_secs"),
        (b'{"name": "bad name!"}', "name"),
    ],
)
def test_bad_input_is_a_clear_400(emulator: EmulatorProcess, body: bytes, fragment: str) -> None:
    status, err = _http("POST", f"{emulator.api_url}/v1/namespaces/default/sandboxes", body,
                        {"Content-Type": "application/json"})
    assert status == 400, err
    assert fragment in err["error"] and err["code"]


def test_sdk_raises_documented_errors(emulator: EmulatorProcess) -> None:
    with pytest.raises(SandboxNotFoundError):
        Sandbox.connect("does-not-exist", request_timeout=T)
    with pytest.raises(RemoteAPIError) as err:
        Sandbox.create(image="no-such-image:1", request_timeout=T)
    assert "no-such-image:1" in str(err.value)
    with pytest.raises(SandboxError):
        Sandbox.create(cpus=64.0, request_timeout=T)


def test_namespaces_isolate(emulator: EmulatorProcess) -> None:
    a = Sandbox.create(namespace="team-a", name=f"iso-{_uid()}", request_timeout=T)
    try:
        ids_b = [s.sandbox_id for s in Sandbox.list(namespace="team-b", request_timeout=T)]
        assert a.sandbox_id not in ids_b
        with pytest.raises(SandboxNotFoundError):
            Sandbox.connect(a.sandbox_id, namespace="team-b", request_timeout=T)
        assert a.sandbox_id in [s.sandbox_id for s in Sandbox.list(namespace="team-a", request_timeout=T)]
    finally:
        a.terminate()


def test_flat_paths(emulator: EmulatorProcess) -> None:
    status, body = _http("POST", f"{emulator.api_url}/sandboxes", b'{"resources":{"cpus":1.0,"memory_mb":256}}',
                         {"Content-Type": "application/json", "X-Tensorlake-Request-Timeout-Ms": "60000",
                          "X-Tensorlake-Request-Timeout-Grace-Ms": "5000"})
    assert status == 200 and body["status"] == "running", body
    sid = body["sandbox_id"]
    status, info = _http("GET", f"{emulator.api_url}/sandboxes/{sid}")
    assert status == 200 and info["namespace"] == "default"
    # the proxy routes on X-Tensorlake-Sandbox-Id for non-localhost hosts
    req = urllib.request.Request(f"{emulator.proxy_url}/api/v1/health", headers={"X-Tensorlake-Sandbox-Id": sid})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.load(r) == {"healthy": True}
    assert _http("DELETE", f"{emulator.api_url}/sandboxes/{sid}")[0] == 200


def test_timeout_terminates_ephemeral(emulator: EmulatorProcess) -> None:
    sb = Sandbox.create(timeout_secs=2, request_timeout=T)
    import time

    deadline = time.time() + 20
    while time.time() < deadline and sb.status != "terminated":
        time.sleep(0.5)
    info = sb.info()
    assert info.status == "terminated"
    assert info.outcome == "Success(Timeout)"


async def test_async_create_list_terminate(emulator: EmulatorProcess) -> None:
    async with await AsyncSandbox.create(cpus=1.0, memory_mb=256, request_timeout=T) as sb:
        info = await sb.info()
        assert (await sb.status()) == "running"
        listed = await asyncio.to_thread(Sandbox.list, request_timeout=T)
        assert info.sandbox_id in [s.sandbox_id for s in listed]
        res = await sb.run("python", ["-c", "print(6*7)"])
        assert res.stdout.strip() == "42"
    status, body = _http("GET", f"{emulator.api_url}/v1/namespaces/default/sandboxes/{info.sandbox_id}")
    assert body["status"] == "terminated"


async def test_async_parallel_creates(emulator: EmulatorProcess) -> None:
    async def one(code: str) -> str:
        async with await AsyncSandbox.create(cpus=0.5, memory_mb=256, request_timeout=T) as sb:
            return (await sb.run("python", ["-c", code])).stdout.strip()

    outs = await asyncio.gather(one("print(2 + 2)"), one("print(sum(range(100)))"), one("print('x')"))
    assert outs == ["4", "4950", "x"]


def test_restart_keeps_running_sandbox_and_reconciles(tmp_path) -> None:
    # TLE_TERMINATE_ON_EXIT=0: stopping the emulator leaves its sandboxes running, as a cloud would.
    emu = EmulatorProcess(data_dir=tmp_path / "data", extra_env={"TLE_TERMINATE_ON_EXIT": "0"}).start()
    url = emu.api_url
    emu2: EmulatorProcess | None = None
    sid: str | None = None
    try:
        sb = Sandbox.create(api_url=url, request_timeout=T)
        sid = sb.sandbox_id
        sb.write_file("/workspace/keep.txt", b"kept")
        gone = Sandbox.create(api_url=url, request_timeout=T)
        # stop the emulator, remove one container behind its back, then restart on the same data folder
        assert emu.proc is not None
        emu.proc.send_signal(15)
        emu.proc.wait(60)
        subprocess.run(["docker", "rm", "-f", f"tle-{gone.sandbox_id}"], capture_output=True, check=True)
        emu2 = EmulatorProcess(data_dir=tmp_path / "data", api_port=emu.api_port, proxy_port=emu.proxy_port).start()
        again = Sandbox.connect(sid, api_url=url, request_timeout=T)
        assert again.status == "running"
        assert again.read_file("/workspace/keep.txt").value == b"kept"
        assert again.run("echo", ["alive"]).stdout.strip() == "alive"
        status, body = _http("GET", f"{url}/v1/namespaces/default/sandboxes/{gone.sandbox_id}")
        assert body["status"] == "terminated" and body["termination_reason"] == "container_lost"
    finally:
        # Whatever failed, neither emulator outlives the test (a failure before the restart used to leave
        # the first one running, refilling its warm reserve for ever).
        if emu2 is not None and sid is not None:
            Sandbox.connect(sid, api_url=url, request_timeout=T).terminate()
        if emu2 is not None:
            emu2.stop()
        emu.stop()


def test_missing_runtime_is_a_clear_error(tmp_path) -> None:
    emu = EmulatorProcess(data_dir=tmp_path / "rt", extra_env={"TLE_RUNTIME": "no-such-runtime"}).start()
    try:
        status, body = _http("POST", f"{emu.api_url}/v1/namespaces/default/sandboxes", b"{}",
                             {"Content-Type": "application/json"})
        assert status == 400 and body["code"] == "RUNTIME_NOT_AVAILABLE" and "no-such-runtime" in body["error"]
    finally:
        emu.stop()


def test_legacy_create_answers_running_with_its_sandbox_url(emulator: EmulatorProcess) -> None:
    """A create without the Grace header (SDK 0.5.113's and the deprecated SandboxClient.create) answers
    once the sandbox runs, so that an old SDK's connect right after finds its sandbox_url."""
    # The image alias: not served by the warm reserve, so this is a cold start the create waits for.
    req = {"resources": {"cpus": 0.5, "memory_mb": 256}, "image": "tensorlake/ubuntu-minimal"}
    status, body = _http("POST", f"{emulator.api_url}/v1/namespaces/default/sandboxes", json.dumps(req).encode(),
                         {"Content-Type": "application/json"})
    try:
        assert status == 200 and body["status"] == "running" and body["sandbox_url"], body
    finally:
        _http("DELETE", f"{emulator.api_url}/v1/namespaces/default/sandboxes/{body['sandbox_id']}")


def _docker_has_runsc() -> bool:
    out = subprocess.run(["docker", "info", "--format", "{{range $k, $v := .Runtimes}}{{$k}} {{end}}"],
                         capture_output=True, text=True, timeout=30).stdout.split()
    return "runsc" in out


@pytest.mark.skipif(not _docker_has_runsc(), reason="Docker has no runsc runtime (emulator/setup/gvisor-install.sh)")
def test_runtime_per_sandbox_by_image_suffix(emulator: EmulatorProcess) -> None:
    """docs/gvisor.md: `+runsc` / `+runc` on the image picks the runtime of one sandbox, whatever the default."""
    image = "tensorlake-emulator/sandbox:latest"
    for runtime, kernel in (("runsc", "4.4.0"), ("runc", None)):
        with Sandbox.create(image=f"{image}+{runtime}", request_timeout=T) as sb:
            info = sb.info()
            assert info.runtime == runtime and info.image == image
            version = sb.run("cat", ["/proc/version"]).stdout
            # gVisor reports its own kernel version; runc shows the host's
            assert (kernel in version) if kernel else ("4.4.0 #1 SMP Sun Jan 10 15:06:54 PST 2016" not in version)
            assert sb.run("echo", ["ok"]).stdout.strip() == "ok"
    with pytest.raises(RemoteAPIError) as err:
        Sandbox.create(image=f"{image}+kata", request_timeout=T)
    assert "400" in str(err.value) and "+runsc" in str(err.value)

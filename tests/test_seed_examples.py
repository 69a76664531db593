"""The product page's suspend and checkpoint example (../shared/seeds), verbatim, sync and async
(split from tests/test_checkpoints.py; same helpers)."""

from __future__ import annotations

import asyncio

import pytest
from checkpoint_helpers import T
from tensorlake.sandbox import AsyncSandbox, Sandbox

from sdk_shim.launcher import EmulatorProcess

pytestmark = pytest.mark.timeout(300)


# ---- the product page's example, verbatim ---------------------------------------------------------


def test_seed_example_sync(emulator: EmulatorProcess) -> None:
    sandbox = Sandbox.create(name="my-env", cpus=1.0)
    try:
        sandbox.suspend()
        sandbox.resume()

        snapshot = sandbox.checkpoint()
        restored = Sandbox.create(snapshot_id=snapshot.snapshot_id)
        assert restored.sandbox_id != sandbox.sandbox_id
        assert restored.run("echo", ["ok"]).stdout.strip() == "ok"
        restored.terminate()
        Sandbox.delete_snapshot(snapshot.snapshot_id, request_timeout=T)
    finally:
        sandbox.terminate()


def test_seed_example_async(emulator: EmulatorProcess) -> None:
    async def main() -> None:
        sandbox = await AsyncSandbox.create(name="my-env", cpus=1.0)
        try:
            await sandbox.suspend()
            await sandbox.resume()

            snapshot = await sandbox.checkpoint()
            restored = await AsyncSandbox.create(snapshot_id=snapshot.snapshot_id)
            assert (await restored.run("echo", ["ok"])).stdout.strip() == "ok"
            await restored.terminate()
            await asyncio.to_thread(Sandbox.delete_snapshot, snapshot.snapshot_id, request_timeout=T)
        finally:
            await sandbox.terminate()

    asyncio.run(main())

"""Aim the unmodified tensorlake SDK at a local emulator."""

from sdk_shim.env import emulator_env, use_emulator
from sdk_shim.launcher import EmulatorProcess

__all__ = ["EmulatorProcess", "emulator_env", "use_emulator"]

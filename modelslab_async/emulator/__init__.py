"""A faithful local emulator of the ModelsLab text2img API (aiohttp.web).

In-process::

    async with Emulator(EmulatorConfig(workers=4)) as emu:
        emu.base_url   # "http://127.0.0.1:<port>/api/v6"

Command line: ``python -m modelslab_async.emulator --port 8000 [options]``.
The emulator imports nothing from the client side of the package.
"""

from __future__ import annotations

from ._cli import add_arguments, config_from_args, run
from ._config import EmulatorConfig, EndpointFaults, Faults
from ._emulator import Emulator
from ._png import HAVE_PILLOW
from ._stats import EmulatorStats, JobStats

__all__ = [
    "HAVE_PILLOW",
    "Emulator",
    "EmulatorConfig",
    "EmulatorStats",
    "EndpointFaults",
    "Faults",
    "JobStats",
    "add_arguments",
    "config_from_args",
    "run",
]

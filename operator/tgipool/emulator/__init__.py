"""TGI emulator: HuggingFace Text Generation Inference's HTTP API, validation, continuous batching and
metrics, without a GPU, so pool layouts can be tried on a laptop or in CI.

Public entry points: `build_app` (an aiohttp app for one emulated server), `EmulatorServer` /
`start_emulators` (run one or many on host:port in the current event loop) and `EmulatorSettings`.
"""

from tgipool.emulator.runner import EmulatorServer, start_emulators, stop_emulators
from tgipool.emulator.server import build_app
from tgipool.emulator.settings import EmulatorSettings, SettingsError

__all__ = [
    "EmulatorServer",
    "EmulatorSettings",
    "SettingsError",
    "build_app",
    "start_emulators",
    "stop_emulators",
]

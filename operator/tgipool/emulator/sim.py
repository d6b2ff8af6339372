"""`tgipool sim`: a live data plane for the simulated cluster.

KWOK runs no container, so this process runs one emulated TGI for every Running inference pod
of every ModelPool, on the pod's own address (the sim cluster hands out loopback pod IPs) and
container port, with the limits from the pod's own TGI args: `curl http://<podIP>:8080/generate`
then answers like the TGI the pod would run. Emulators stop when their pod goes. Many fit in one
process (one event loop, one scheduler task each).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Any

from tgipool.desired import names
from tgipool.emulator.runner import EmulatorServer
from tgipool.emulator.settings import EmulatorSettings
from tgipool.k8s.client import Kube

log = logging.getLogger("tgipool.sim")

POD_SELECTOR = f"app.kubernetes.io/managed-by={names.MANAGED_BY},{names.COMPONENT_LABEL}={names.SERVER}"
_INT_FLAGS = {
    "--max-input-tokens": "max_input_tokens",
    "--max-total-tokens": "max_total_tokens",
    "--max-batch-prefill-tokens": "max_batch_prefill_tokens",
    "--max-concurrent-requests": "max_concurrent_requests",
    "--max-batch-total-tokens": "max_batch_total_tokens",
    "--max-batch-size": "max_batch_size",
    "--port": "port",
}


def settings_for_pod(pod: dict[str, Any], base: EmulatorSettings) -> EmulatorSettings | None:
    """The emulator a pod would be: its address, and its TGI container's flags."""
    status, spec = pod.get("status", {}), pod.get("spec", {})
    if (
        pod["metadata"].get("deletionTimestamp")
        or status.get("phase") != "Running"
        or not status.get("podIP")
    ):
        return None
    container = next((c for c in spec.get("containers", []) if c.get("name") == "tgi"), None)
    if container is None:
        return None
    values: dict[str, Any] = {"hostname": status["podIP"]}
    for arg in container.get("args", []):
        flag, _, value = arg.partition("=")
        if flag in _INT_FLAGS and value.isdigit():
            values[_INT_FLAGS[flag]] = int(value)
        elif flag == "--model-id":
            values["model_id"] = value
    return replace(base, **values)


class Sim:
    def __init__(self, kube: Kube, base: EmulatorSettings) -> None:
        self.kube = kube
        self.base = base
        self.running: dict[str, tuple[EmulatorSettings, EmulatorServer]] = {}

    async def sync(self) -> None:
        pods = await asyncio.to_thread(self.kube.list, "v1", "Pod", POD_SELECTOR)
        want: dict[str, tuple[EmulatorSettings, str]] = {}
        for pod in pods:
            s = settings_for_pod(pod, self.base)
            if s is not None:
                want[f"{s.hostname}:{s.port}"] = (
                    s,
                    f"{pod['metadata']['namespace']}/{pod['metadata']['name']}",
                )
        for key, (settings, server) in list(self.running.items()):
            if key not in want or want[key][0] != settings:
                await server.stop()
                del self.running[key]
                log.info("stopped emulator on %s", key)
        for key, (settings, pod_name) in want.items():
            if key in self.running:
                continue
            server = EmulatorServer(settings)
            try:
                await server.start()
            except OSError as e:
                log.warning("cannot serve pod %s on %s: %s", pod_name, key, e)
                continue
            self.running[key] = (settings, server)
            log.info(
                "emulating pod %s on http://%s (max_total_tokens=%s)",
                pod_name,
                key,
                settings.max_total_tokens,
            )

    async def run(self, interval: float) -> None:
        try:
            while True:
                try:
                    await self.sync()
                except Exception as e:
                    log.warning("sync failed: %s", e)
                await asyncio.sleep(interval)
        finally:
            for _, server in self.running.values():
                await server.stop()


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sim", help="serve an emulated TGI on every Running pod of every ModelPool (simulated cluster)"
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between pod list syncs")
    p.add_argument("--prefill-tokens-per-second", type=float, default=20000.0)
    p.add_argument("--decode-step-ms", type=float, default=20.0)
    p.add_argument("--decode-step-growth-ms", type=float, default=0.1)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    base = EmulatorSettings(
        prefill_tokens_per_second=args.prefill_tokens_per_second,
        decode_step_ms=args.decode_step_ms,
        decode_step_growth_ms=args.decode_step_growth_ms,
    )
    sim = Sim(Kube.from_environment(field_manager="tgipool-sim"), base)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(sim.run(args.interval))
    return 0

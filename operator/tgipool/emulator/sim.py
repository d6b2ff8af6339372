"""`tgipool sim`: a live data plane for the simulated cluster.

KWOK runs no container, so this process runs one emulated server for every Running inference pod
of every ModelPool (the engine of its `tgipool.io/engine` label: TGI without one; vLLM and SGLang read
their own launcher flags, see `_INT_FLAGS`), on the pod's own address (the sim cluster hands out
loopback pod IPs) and container port, with the limits from the pod's own args: `curl http://<podIP>:8080/generate`
then answers like the TGI the pod would run. Emulators stop when their pod goes. Many fit in one
process (one event loop, one scheduler task each).

Cold starts: a pod's emulator loads (answers 503) for its weights' bytes (the Deployment's
`tgipool.io/weights-bytes` pod annotation, from the planner) over `--load-bytes-per-second`, counted
from the container's start, so a restarted sim does not load pods again. And the sim is the kubelet's
readiness prober for these pods (prober.py): KWOK makes them Running but not Ready, the sim reports
them Ready once their `/health` answers, and unready again if it stops.

Faults: a pod annotated `sim.tgipool.io/fault` (`oom`, `slow`, `never-ready`; a pool sets it through
`spec.podTemplate.annotations`) fails as TGI would: see faults.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kubernetes

from tgipool.api.modelpool import EngineKind
from tgipool.desired import names
from tgipool.desired.deployment import WEIGHTS_BYTES_ANNOTATION
from tgipool.emulator import faults
from tgipool.emulator.prober import ReadinessProber
from tgipool.emulator.readiness import container_started_at, status_patch
from tgipool.emulator.runner import EmulatorServer
from tgipool.emulator.settings import EmulatorSettings
from tgipool.k8s.client import Kube
from tgipool.monitoring.engine_metrics import ENGINES

log = logging.getLogger("tgipool.sim")

# Weights move from the node's cache to the GPUs at about 2 GB/s: a PCIe 4.0 NVMe SSD reads 3-7 GB/s
# sequentially, and safetensors loading (page cache, then host-to-GPU copies per shard) gets well below
# that in practice. A round figure, not a measurement: 16 GB (an 8B model in bf16) load in 8 s.
DEFAULT_LOAD_BYTES_PER_SECOND = 2e9

POD_SELECTOR = f"app.kubernetes.io/managed-by={names.MANAGED_BY},{names.COMPONENT_LABEL}={names.SERVER}"
# Each engine's launcher flags the emulator honours -> the EmulatorSettings field they set.
_INT_FLAGS: dict[str, dict[str, str]] = {
    "tgi": {
        "--max-input-tokens": "max_input_tokens",
        "--max-total-tokens": "max_total_tokens",
        "--max-batch-prefill-tokens": "max_batch_prefill_tokens",
        "--max-concurrent-requests": "max_concurrent_requests",
        "--max-batch-total-tokens": "max_batch_total_tokens",
        "--max-batch-size": "max_batch_size",
        "--port": "port",
    },
    "vllm": {
        "--max-model-len": "max_total_tokens",
        "--max-num-seqs": "max_batch_size",
        "--max-num-batched-tokens": "max_batch_prefill_tokens",
        "--port": "port",
    },
    "sglang": {
        "--context-length": "max_total_tokens",
        "--max-running-requests": "max_batch_size",
        "--chunked-prefill-size": "max_batch_prefill_tokens",
        "--max-total-tokens": "max_batch_total_tokens",
        "--port": "port",
    },
}
_STR_FLAGS: dict[str, dict[str, str]] = {
    "tgi": {"--model-id": "model_id", "--served-model-name": "served_model_name"},
    "vllm": {"--model": "model_id", "--served-model-name": "served_model_name"},
    "sglang": {"--model-path": "model_id", "--served-model-name": "served_model_name"},
}
_LORA_FLAGS = {"tgi": "--lora-adapters", "vllm": "--lora-modules", "sglang": "--lora-paths"}
# vLLM and SGLang queue without a cap: permits the size of a large queue, not TGI's 128.
_UNCAPPED_CONCURRENCY = 100_000


def _flags(argv: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """`--flag=value`, `--flag value` and `--flag v1 v2` (vLLM's lists) -> values; and the positionals."""
    flags: dict[str, list[str]] = {}
    positional: list[str] = []
    current: str | None = None
    for arg in argv:
        if arg.startswith("--"):
            flag, eq, value = arg.partition("=")
            flags[flag] = [value] if eq else []
            current = None if eq else flag
        elif current is not None:
            flags[current].append(arg)
        else:
            positional.append(arg)
    return flags, positional


def engine_of(pod: Mapping[str, Any]) -> EngineKind:
    """The pod's engine (label `tgipool.io/engine`, set on non-TGI pods only); TGI without it."""
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(names.ENGINE_LABEL, "tgi")
    return value if value in ENGINES else "tgi"


def _server_container(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The inference server container: the one named `tgi`, else the first with a port named `http`."""
    containers = (pod.get("spec") or {}).get("containers") or []
    named = next((c for c in containers if c.get("name") == faults.TGI_CONTAINER), None)
    return named or next(
        (c for c in containers if any(p.get("name") == "http" for p in c.get("ports") or [])), None
    )


def load_seconds(pod: Mapping[str, Any], bytes_per_second: float) -> float:
    """How long the pod's TGI loads: its weights' bytes (annotation) at `bytes_per_second`; 0 without."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(WEIGHTS_BYTES_ANNOTATION, "")
    if not raw.isdigit() or bytes_per_second <= 0:
        return 0.0
    return int(raw) / bytes_per_second


def load_left(pod: Mapping[str, Any], seconds: float, now: datetime) -> float:
    """What is left of a load of `seconds` that began when the pod's TGI container started."""
    container = _server_container(pod)
    started = container_started_at(pod, container["name"] if container else faults.TGI_CONTAINER)
    if started is None:
        return seconds
    return min(seconds, max(0.0, seconds - (now - started).total_seconds()))


def settings_for_pod(
    pod: dict[str, Any], base: EmulatorSettings, load_bytes_per_second: float = 0.0
) -> EmulatorSettings | None:
    """The emulator a pod would be: its address, its TGI container's flags and its load time."""
    status = pod.get("status", {})
    if (
        pod["metadata"].get("deletionTimestamp")
        or status.get("phase") != "Running"
        or not status.get("podIP")
    ):
        return None
    container = _server_container(pod)
    if container is None:
        return None
    engine = engine_of(pod)
    flags, positional = _flags([*(container.get("command") or []), *(container.get("args") or [])])
    # Until an engine's builder renders its own flags its pods carry TGI's: read what the pod says.
    dialect: EngineKind = "tgi" if "--model-id" in flags else engine
    values: dict[str, Any] = {
        "hostname": status["podIP"],
        "load_seconds": load_seconds(pod, load_bytes_per_second),
        "engine": engine,
    }
    http = [p.get("containerPort") for p in container.get("ports") or [] if p.get("name") == "http"]
    if http and isinstance(http[0], int):
        values["port"] = http[0]
    if dialect != "tgi":
        values["max_concurrent_requests"] = _UNCAPPED_CONCURRENCY
    if dialect == "vllm" and "serve" in positional[:3]:  # `vllm serve MODEL`
        after = positional[positional.index("serve") + 1 :]
        if after:
            values["model_id"] = after[0]
    int_flags, str_flags = dict(_INT_FLAGS[dialect]), dict(_STR_FLAGS[dialect])
    if dialect != engine:  # TGI's flags, and the engine's own from extraArgs where TGI has no such flag
        int_flags = {**{k: v for k, v in _INT_FLAGS[engine].items() if k not in int_flags}, **int_flags}
        str_flags = {**{k: v for k, v in _STR_FLAGS[engine].items() if k not in str_flags}, **str_flags}
    for flag, field in int_flags.items():
        given = flags.get(flag) or []
        if given and given[0].isdigit():
            values[field] = int(given[0])
    for flag, field in str_flags.items():
        if flags.get(flag):
            values[field] = flags[flag][0]
    lora = [v for given in flags.get(_LORA_FLAGS[dialect], []) for v in given.split(",") if v]
    if lora:
        values["lora_adapters"] = tuple(lora)
    # A pod annotated sim.tgipool.io/fault fails as TGI would (faults.py): slower, or not listening.
    return faults.served(faults.of_pod(pod), replace(base, **values))


def _rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Sim:
    def __init__(
        self,
        kube: Kube,
        base: EmulatorSettings,
        load_bytes_per_second: float = DEFAULT_LOAD_BYTES_PER_SECOND,
        readiness: bool = True,
    ) -> None:
        self.kube = kube
        self.base = base
        self.load_bytes_per_second = load_bytes_per_second
        self.readiness = readiness
        self.prober: ReadinessProber | None = None  # made in run(), inside the event loop
        # address -> (the pod's settings with its full load time, the server); compared each sync
        self.running: dict[str, tuple[EmulatorSettings, EmulatorServer]] = {}

    async def sync(self) -> None:
        pods = await asyncio.to_thread(self.kube.list, "v1", "Pod", POD_SELECTOR)
        pods = await self._crash(pods)
        await self._serve(pods)
        if self.prober is not None:
            await self._probe(pods)

    async def _crash(self, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Pods whose TGI dies at warm-up (fault `oom`) crash-loop as a kubelet reports it; the rest go on."""
        now = datetime.now(UTC)
        crashing = [p for p in pods if faults.crashes(p)]
        patches = [(p, faults.crash_patch(p, now)) for p in crashing]
        await asyncio.gather(
            *(asyncio.to_thread(self._patch_status, p, patch) for p, patch in patches if patch)
        )
        return [p for p in pods if not faults.crashes(p)]

    async def _serve(self, pods: list[dict[str, Any]]) -> None:
        now = datetime.now(UTC)
        want: dict[str, tuple[EmulatorSettings, dict[str, Any]]] = {}
        for pod in pods:
            s = settings_for_pod(pod, self.base, self.load_bytes_per_second)
            if s is not None:
                want[f"{s.hostname}:{s.port}"] = (s, pod)
        for key, (settings, server) in list(self.running.items()):
            if key not in want or want[key][0] != settings:
                await server.stop()
                del self.running[key]
                log.info("stopped emulator on %s", key)
        for key, (settings, pod) in want.items():
            if key in self.running:
                continue
            pod_name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
            left = load_left(pod, settings.load_seconds, now)
            server = EmulatorServer(replace(settings, load_seconds=left))
            try:
                await server.start()
            except OSError as e:
                log.warning("cannot serve pod %s on %s: %s", pod_name, key, e)
                continue
            self.running[key] = (settings, server)
            log.info(
                "emulating pod %s on http://%s (max_total_tokens=%s, loading %.1fs of %.1fs)",
                pod_name,
                key,
                settings.max_total_tokens,
                left,
                settings.load_seconds,
            )

    async def _probe(self, pods: list[dict[str, Any]]) -> None:
        """The kubelet's part: probe each Running pod, write Ready/unready when it changes."""
        assert self.prober is not None
        live = [p for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")]
        live = [p for p in live if not p["metadata"].get("deletionTimestamp")]
        verdicts = await asyncio.gather(*(self.prober.verdicts(p) for p in live))
        self.prober.forget(p["metadata"]["uid"] for p in live)
        now = _rfc3339(datetime.now(UTC))
        patches = [(pod, status_patch(pod, v, now)) for pod, v in zip(live, verdicts, strict=True)]
        await asyncio.gather(
            *(asyncio.to_thread(self._patch_status, pod, patch) for pod, patch in patches if patch)
        )

    def _patch_status(self, pod: dict[str, Any], patch: dict[str, Any]) -> None:
        meta = pod["metadata"]
        ready = patch["status"]["conditions"][-1]["status"] == "True"
        try:
            kubernetes.client.CoreV1Api(self.kube.api).patch_namespaced_pod_status(
                meta["name"],
                meta["namespace"],
                patch,
                field_manager=self.kube.field_manager,
                _content_type="application/strategic-merge-patch+json",
                _request_timeout=10,
            )
        except kubernetes.client.ApiException as e:
            if e.status in (404, 409):  # gone, or changed since we looked: judged again next sync
                return
            raise
        log.info("pod %s/%s %s", meta["namespace"], meta["name"], "Ready" if ready else "not Ready")

    async def run(self, interval: float) -> None:
        # One connection per probe, as the kubelet does; no pool to outlive an emulator.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            self.prober = ReadinessProber(session) if self.readiness else None
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
    p.add_argument(
        "--load-bytes-per-second",
        type=float,
        default=DEFAULT_LOAD_BYTES_PER_SECOND,
        help="cold start: a pod loads its weights (annotation tgipool.io/weights-bytes) at this rate; "
        "0 = no loading (default 2e9: NVMe to GPU, roughly)",
    )
    p.add_argument(
        "--no-readiness",
        dest="readiness",
        action="store_false",
        help="do not act as the pods' readiness prober (for clusters whose kubelet does it)",
    )
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # While the API server restarts, "sync failed" says it once per sync; urllib3's retries would say it 3x.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    base = EmulatorSettings(
        prefill_tokens_per_second=args.prefill_tokens_per_second,
        decode_step_ms=args.decode_step_ms,
        decode_step_growth_ms=args.decode_step_growth_ms,
    )
    sim = Sim(
        Kube.from_environment(field_manager="tgipool-sim"),
        base,
        load_bytes_per_second=args.load_bytes_per_second,
        readiness=args.readiness,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(sim.run(args.interval))
    return 0

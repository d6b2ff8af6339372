"""The Prometheus metrics of an emulated vLLM or SGLang server: the names of the engine table
(`tgipool.monitoring.engine_metrics`) for the emulated version, with prometheus-client's own text output
(both engines export through prometheus-client: counters end in `_total`, `# HELP` lines are there).

The emulator records what it does once (engine.py); this class turns it into the engine's series:
gauges are read from the scheduler at scrape time, histograms and counters are recorded per request.
Buckets are the engines' defaults (vLLM `vllm/v1/metrics/loggers.py`, SGLang `metrics/collector.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tgipool.api.modelpool import EngineKind
from tgipool.monitoring.engine_metrics import MetricName, Signal, exported

_VLLM_TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
              20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]  # fmt: skip
_VLLM_ITL = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
             40.0, 80.0]  # fmt: skip
_VLLM_E2E = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
             240.0, 480.0, 960.0, 1920.0, 7680.0]  # fmt: skip
_SGLANG_TTFT = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400]
_SGLANG_ITL = [0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080,
               0.100, 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000]  # fmt: skip
_SGLANG_E2E = [
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1,
    2,
    4,
    6,
    8,
    10,
    20,
    40,
    60,
    80,
    100,
    200,
    400,
    600,
    1200,
    1800,
    2400,
]
BUCKETS: dict[tuple[EngineKind, Signal], list[float]] = {
    ("vllm", "ttft"): _VLLM_TTFT,
    ("vllm", "itl"): _VLLM_ITL,
    ("vllm", "e2e"): _VLLM_E2E,
    ("sglang", "ttft"): _SGLANG_TTFT,
    ("sglang", "itl"): _SGLANG_ITL,
    ("sglang", "e2e"): _SGLANG_E2E,
}
# Labels every series of the engine carries (vLLM: `model_name`, `engine`; SGLang: `model_name`).
_BASE_LABELS: dict[EngineKind, tuple[str, ...]] = {
    "vllm": ("model_name", "engine"),
    "sglang": ("model_name",),
}
_MATCHER = re.compile(r'(\w+)=~?"([^"|]+)')

# The scheduler's state at scrape time: (waiting, running, KV cache in use 0..1).
StateReader = Callable[[], tuple[int, int, float]]


class EngineMetrics:
    def __init__(self, engine: EngineKind, version: str, model_name: str, state: StateReader) -> None:
        self.engine = engine
        self.version = version
        self.registry = CollectorRegistry(auto_describe=False)
        self._state = state
        base = _BASE_LABELS.get(engine, ("model_name",))
        self._base = {"model_name": model_name, "engine": "0"}
        self._base = {k: v for k, v in self._base.items() if k in base}
        self.rows = exported(engine, version)
        self._made: dict[str, Any] = {}
        self._by_signal: dict[Signal, list[tuple[MetricName, Any]]] = {}
        outcome = self._outcome_label()
        for row in self.rows:
            metric = self._made.get(row.name) or self._make(row, base, outcome)
            self._made[row.name] = metric
            self._by_signal.setdefault(row.signal, []).append((row, metric))
            if outcome is None or row.signal not in ("requests", "failures"):
                metric.labels(**self._base)  # the engines create their series at start, at zero

    def _outcome_label(self) -> tuple[str, str] | None:
        """When failures are one outcome of the requests counter (vLLM's `finished_reason`): the label
        and the value a failed request gets; None when failures have their own counter."""
        req = [r for r in self.rows if r.signal == "requests"]
        fail = [r for r in self.rows if r.signal == "failures"]
        if req and fail and req[0].name == fail[0].name:
            found = _MATCHER.search(fail[0].matchers)
            if found:
                return found.group(1), found.group(2)
        return None

    def _make(self, row: MetricName, base: tuple[str, ...], outcome: tuple[str, str] | None) -> Any:
        reg = self.registry
        if row.kind == "gauge":
            return Gauge(row.name, row.name, base, registry=reg)
        if row.kind == "histogram":
            buckets = BUCKETS.get((self.engine, row.signal), [0.1, 1.0, 10.0])
            return Histogram(row.name, row.name, base, buckets=buckets, registry=reg)
        labels = base
        if outcome is not None and row.signal in ("requests", "failures"):
            labels = (*base, outcome[0])
        # prometheus-client adds `_total` to a counter's samples, as in the engines themselves.
        return Counter(row.name.removesuffix("_total"), row.name, labels, registry=reg)

    def _each(self, signal: Signal) -> list[tuple[MetricName, Any]]:
        return self._by_signal.get(signal, [])

    def finished(
        self, ttft: float, itl: float, e2e: float, prompt_tokens: int, generated: int, reason: str
    ) -> None:
        """A request that completed: `reason` is the OpenAI finish reason (stop, length)."""
        for _, h in self._each("ttft"):
            h.labels(**self._base).observe(ttft)
        for _, h in self._each("itl"):
            for _ in range(max(generated - 1, 0)):  # one observation per token after the first
                h.labels(**self._base).observe(itl)
        for _, h in self._each("e2e"):
            h.labels(**self._base).observe(e2e)
        for _, c in self._each("generated_tokens"):
            c.labels(**self._base).inc(generated)
        for _, c in self._each("prompt_tokens"):
            c.labels(**self._base).inc(prompt_tokens)
        self._count(reason, failed=False)

    def aborted(self) -> None:
        """A request that never completed (the client went away)."""
        self._count("abort", failed=True)

    def _count(self, reason: str, failed: bool) -> None:
        outcome = self._outcome_label()
        if outcome is not None:
            label, failed_value = outcome
            for _, c in self._each("requests"):
                c.labels(**self._base, **{label: failed_value if failed else reason}).inc()
            return
        for _, c in self._each("requests"):
            c.labels(**self._base).inc()
        if failed:
            for _, c in self._each("failures"):
                c.labels(**self._base).inc()

    def render(self) -> str:
        waiting, running, kv = self._state()
        for signal, value in (("queue", waiting), ("running", running), ("kv_usage", kv)):
            for _, g in self._each(signal):  # type: ignore[arg-type]
                g.labels(**self._base).set(value)
        text = generate_latest(self.registry).decode()
        return "".join(line + "\n" for line in text.splitlines() if not _name(line).endswith("_created"))


def _name(line: str) -> str:
    """The metric name of an exposition line (a sample, or a `# HELP` / `# TYPE` line)."""
    parts = line.split(" ")
    if line.startswith("#"):
        return parts[2] if len(parts) > 2 else ""
    return parts[0].partition("{")[0]

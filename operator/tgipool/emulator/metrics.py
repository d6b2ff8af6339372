"""TGI's Prometheus metrics, one `CollectorRegistry` per emulator so many emulators share a process.

TGI exports through `metrics-exporter-prometheus`, which differs from prometheus-client's text output in
three ways that dashboards and autoscalers see, so the emulator renders the registry itself:

* counters keep their bare names (`tgi_request_count`, not `tgi_request_count_total`), so counters are
  a small custom collector (prometheus-client's `Counter` always adds `_total`);
* series appear lazily, on first record (an idle TGI shows no `tgi_request_duration` at all);
* no `# HELP` lines and no `_created` samples; families are separated by blank lines.

Names, types, labels and buckets follow `router/src/server.rs` (bucket matchers) and
`backends/v3/src/{queue,backend}.rs`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


def duration_buckets() -> list[float]:
    """35 geometric buckets: 0.0001 * 1.5^k for k = 1..35 (0.00015 s to ~145.6 s), computed like TGI."""
    buckets, value = [], 0.0001
    for _ in range(35):
        value *= 1.5
        buckets.append(value)
    return buckets


def linear_buckets(limit: int) -> list[float]:
    return [(limit / 100.0) * (x + 1) for x in range(100)]


def _fmt(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


class BareCounter:
    """A counter exported under its own name, with optional labels."""

    def __init__(self, name: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name = name
        self.labelnames = labelnames
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labelvalues: str, amount: float = 1.0) -> None:
        self.values[labelvalues] = self.values.get(labelvalues, 0.0) + amount

    def value(self, *labelvalues: str) -> float:
        return self.values.get(labelvalues, 0.0)


class _BareCounterCollector(Collector):
    def __init__(self, counters: Iterable[BareCounter]) -> None:
        self._counters = list(counters)

    def collect(self) -> Iterator[Metric]:
        for counter in self._counters:
            family = Metric(counter.name, counter.name, "counter")
            for labelvalues, value in counter.values.items():
                family.add_sample(
                    counter.name, dict(zip(counter.labelnames, labelvalues, strict=True)), value
                )
            yield family


class TgiMetrics:
    """The router and v3 backend metrics of one emulated TGI server."""

    def __init__(self, max_input_tokens: int, max_total_tokens: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._touched: set[str] = set()
        reg = self.registry
        durations = duration_buckets()

        def hist(name: str, buckets: list[float], labels: tuple[str, ...] = ()) -> Histogram:
            return Histogram(name, name, labelnames=labels, buckets=buckets, registry=reg)

        def gauge(name: str) -> Gauge:
            return Gauge(name, name, registry=reg)

        # Router (router/src/server.rs, infer/mod.rs, validation.rs)
        self.request_count = BareCounter("tgi_request_count")
        self.request_success = BareCounter("tgi_request_success")
        self.request_failure = BareCounter("tgi_request_failure", ("err",))
        self.request_duration = hist("tgi_request_duration", durations)
        self.request_validation_duration = hist("tgi_request_validation_duration", durations)
        self.request_queue_duration = hist("tgi_request_queue_duration", durations)
        self.request_inference_duration = hist("tgi_request_inference_duration", durations)
        self.request_mean_time_per_token_duration = hist(
            "tgi_request_mean_time_per_token_duration", durations
        )
        self.request_input_length = hist("tgi_request_input_length", linear_buckets(max_input_tokens))
        self.request_generated_tokens = hist("tgi_request_generated_tokens", linear_buckets(max_total_tokens))
        self.request_max_new_tokens = hist("tgi_request_max_new_tokens", linear_buckets(max_total_tokens))
        # Backend (backends/v3/src)
        self.queue_size = gauge("tgi_queue_size")
        self.batch_current_size = gauge("tgi_batch_current_size")
        self.batch_current_max_tokens = gauge("tgi_batch_current_max_tokens")
        self.batch_next_size = hist("tgi_batch_next_size", [float(x + 1) for x in range(1024)])
        self.batch_inference_count = BareCounter("tgi_batch_inference_count", ("method",))
        self.batch_inference_success = BareCounter("tgi_batch_inference_success", ("method",))
        self.batch_inference_duration = hist("tgi_batch_inference_duration", durations, ("method",))
        self.batch_forward_duration = hist("tgi_batch_forward_duration", durations, ("method",))
        reg.register(
            _BareCounterCollector(
                [
                    self.request_count,
                    self.request_success,
                    self.request_failure,
                    self.batch_inference_count,
                    self.batch_inference_success,
                ]
            )
        )

    # Recording helpers mark a family as touched, so it is exported from then on (TGI's lazy series).
    def inc(self, counter: BareCounter, *labels: str) -> None:
        counter.inc(*labels)
        self._touched.add(counter.name)

    def observe(self, histogram: Histogram, value: float, *labels: str) -> None:
        (histogram.labels(*labels) if labels else histogram).observe(value)
        self._touched.add(histogram._name)

    def set(self, gauge: Gauge, value: float) -> None:
        gauge.set(value)
        self._touched.add(gauge._name)

    def render(self) -> str:
        """Prometheus text format the way metrics-exporter-prometheus writes it."""
        out: list[str] = []
        for family in self.registry.collect():
            if family.name not in self._touched or not family.samples:
                continue
            out.append(f"# TYPE {family.name} {family.type}\n")
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue
                # Rust prints bucket bounds like any f64 ("2", not prometheus-client's "2.0").
                labels = ",".join(f'{k}="{_fmt(float(v)) if k == "le" else v}"' for k, v in s.labels.items())
                out.append(
                    f"{s.name}{{{labels}}} {_fmt(s.value)}\n" if labels else f"{s.name} {_fmt(s.value)}\n"
                )
            out.append("\n")
        return "".join(out)

"""PURE: the metric names of each inference engine, by signal and by engine version: their one home.

Engines rename metrics between releases (vLLM's deprecation policy: a name deprecated in X.Y is hidden
in X.Y+1 and removed in X.Y+2), so each row says which versions export it: `since` (first version that
exports it; None: every version we support) and `until` (first version that no longer exports it by
default; None: still exported). Queries read every name of a signal, newest first (`or`), so a pool keeps
its numbers across an engine upgrade; the emulator exports the names of the version it emulates.

`name` is the sample name a query reads: a histogram's family name (queries add `_bucket`), a counter's
sample as scraped (prometheus-client engines add `_total`; TGI's counters have none, TGI.md section 3).
TGI has no token counters: its generated and prompt tokens are the `_sum` of its length histograms.

Sources (checked 2026-11-29): TGI `router/src` (TGI.md section 3); vLLM `vllm/v1/metrics/loggers.py`,
PR #18354 (`gpu_cache_usage_perc` -> `kv_cache_usage_perc`, in 0.10), PR #24015 and #29330
(`time_per_output_token_seconds` -> `inter_token_latency_seconds`, hidden from 0.12); SGLang
`python/sglang/srt/metrics/collector.py` and docs/references/production_metrics.md (older docs show
`time_per_output_token_seconds`; the version of that rename is our best reading, marked below).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from tgipool.api.modelpool import EngineKind

Signal = Literal[
    "queue",  # requests waiting for a batch slot (the HPA's scaling signal)
    "running",  # requests in the running batch
    "kv_usage",  # KV cache in use, 0..1
    "ttft",  # time to first token (histogram, seconds)
    "itl",  # time per output token / inter-token latency (histogram, seconds)
    "e2e",  # end-to-end request duration (histogram, seconds)
    "generated_tokens",  # generated tokens (counter)
    "prompt_tokens",  # prompt tokens (counter)
    "requests",  # requests finished or failed (counter)
    "failures",  # requests failed (counter)
]
Kind = Literal["gauge", "counter", "histogram"]
ENGINES: tuple[EngineKind, ...] = get_args(EngineKind)
SIGNALS: tuple[Signal, ...] = get_args(Signal)


@dataclass(frozen=True)
class MetricName:
    engine: EngineKind
    signal: Signal
    name: str
    kind: Kind
    since: str | None = None
    until: str | None = None
    matchers: str = ""  # extra label matchers, e.g. `finished_reason="abort"`
    note: str = ""

    def exported_by(self, version: str) -> bool:
        v = parse_version(version)
        return (self.since is None or v >= parse_version(self.since)) and (
            self.until is None or v < parse_version(self.until)
        )


# The version each engine's emulator reports by default: TGI's last release line, and the current vLLM
# and SGLang releases on PyPI (ENGINES.md).
CURRENT_VERSION: dict[EngineKind, str] = {"tgi": "3.3.6", "vllm": "0.33.0", "sglang": "0.5.23"}

_M = MetricName
TABLE: tuple[MetricName, ...] = (
    # TGI 2.x-3.3.x: stable names; no KV usage, no time-to-first-token histogram.
    _M("tgi", "queue", "tgi_queue_size", "gauge"),
    _M("tgi", "running", "tgi_batch_current_size", "gauge"),
    _M("tgi", "itl", "tgi_request_mean_time_per_token_duration", "histogram", note="mean per request"),
    _M("tgi", "e2e", "tgi_request_duration", "histogram", note="buckets end at 145.6 s"),
    _M("tgi", "generated_tokens", "tgi_request_generated_tokens_sum", "counter", note="histogram sum"),
    _M("tgi", "prompt_tokens", "tgi_request_input_length_sum", "counter", note="histogram sum"),
    _M("tgi", "requests", "tgi_request_count", "counter"),
    _M("tgi", "failures", "tgi_request_failure", "counter"),
    # vLLM (v1 engine).
    _M("vllm", "queue", "vllm:num_requests_waiting", "gauge"),
    _M("vllm", "running", "vllm:num_requests_running", "gauge"),
    _M("vllm", "kv_usage", "vllm:kv_cache_usage_perc", "gauge", since="0.10.0"),
    _M("vllm", "kv_usage", "vllm:gpu_cache_usage_perc", "gauge", until="0.11.0", note="deprecated 0.10"),
    _M("vllm", "ttft", "vllm:time_to_first_token_seconds", "histogram"),
    _M("vllm", "itl", "vllm:inter_token_latency_seconds", "histogram", since="0.11.0"),
    _M(
        "vllm",
        "itl",
        "vllm:time_per_output_token_seconds",
        "histogram",
        until="0.12.0",
        note="deprecated 0.11",
    ),
    _M("vllm", "e2e", "vllm:e2e_request_latency_seconds", "histogram"),
    _M("vllm", "generated_tokens", "vllm:generation_tokens_total", "counter"),
    _M("vllm", "prompt_tokens", "vllm:prompt_tokens_total", "counter"),
    # vLLM counts finished requests by `finished_reason` (stop, length, abort; error where reported):
    # no separate failure counter, so aborted and errored requests are the failures.
    _M("vllm", "requests", "vllm:request_success_total", "counter"),
    _M(
        "vllm", "failures", "vllm:request_success_total", "counter", matchers='finished_reason=~"abort|error"'
    ),
    # SGLang (`--enable-metrics`).
    _M("sglang", "queue", "sglang:num_queue_reqs", "gauge"),
    _M("sglang", "running", "sglang:num_running_reqs", "gauge"),
    _M("sglang", "kv_usage", "sglang:token_usage", "gauge"),
    _M("sglang", "ttft", "sglang:time_to_first_token_seconds", "histogram"),
    _M(
        "sglang",
        "itl",
        "sglang:inter_token_latency_seconds",
        "histogram",
        since="0.5.0",
        note="version approx.",
    ),
    _M(
        "sglang",
        "itl",
        "sglang:time_per_output_token_seconds",
        "histogram",
        until="0.5.0",
        note="version approx.",
    ),
    _M("sglang", "e2e", "sglang:e2e_request_latency_seconds", "histogram"),
    _M("sglang", "generated_tokens", "sglang:generation_tokens_total", "counter"),
    _M("sglang", "prompt_tokens", "sglang:prompt_tokens_total", "counter"),
    _M("sglang", "requests", "sglang:num_requests_total", "counter"),
    _M("sglang", "failures", "sglang:num_aborted_requests_total", "counter"),
)


def parse_version(version: str) -> tuple[int, ...]:
    """`0.11.0`, `v0.11.0rc1`, `3.3.6-dev0` -> (0, 11, 0): release numbers only."""
    nums = re.match(r"v?(\d+(?:\.\d+)*)", version.strip())
    return tuple(int(n) for n in nums.group(1).split(".")) if nums else (0,)


def names(engine: EngineKind, signal: Signal) -> list[MetricName]:
    """Every name of a signal, newest first (the current name, then the ones it replaced)."""
    rows = [m for m in TABLE if m.engine == engine and m.signal == signal]
    return sorted(rows, key=lambda m: m.until is not None)


def exported(engine: EngineKind, version: str | None = None) -> list[MetricName]:
    """The names an engine of `version` (default: the current one) exports, one or more per signal."""
    v = version or CURRENT_VERSION[engine]
    return [m for m in TABLE if m.engine == engine and m.exported_by(v)]


def current(engine: EngineKind, signal: Signal) -> MetricName | None:
    rows = names(engine, signal)
    return rows[0] if rows else None


def adapter_name(prometheus_name: str) -> str:
    """The custom-metrics API name prometheus-adapter gives a series: `:` is not kept in it."""
    return prometheus_name.replace(":", "_")


def hpa_queue_metric(engine: EngineKind) -> str:
    """The Pods metric a pool's HPA scales on: the engine's queue gauge, as the adapter serves it."""
    row = current(engine, "queue")
    assert row is not None, f"no queue metric for {engine}"
    return adapter_name(row.name)

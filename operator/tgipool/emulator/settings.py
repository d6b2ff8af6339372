"""Emulator settings: the launcher's serving limits plus the knobs of the latency model.

Defaults follow TGI where TGI has a static default (`--max-concurrent-requests` 128, `--max-best-of` 2, ...).
Where TGI derives a value from the GPU at warmup, the emulator picks a fixed, documented stand-in:

* `max_total_tokens` 4096 (a common model context), `max_input_tokens` = `max_total_tokens - 1` as TGI does;
* `max_batch_prefill_tokens` 4096 (TGI's fallback when it cannot compute one);
* `max_batch_total_tokens` = max(16384, `max_total_tokens`) (TGI infers it from free VRAM).

The latency model (see `scheduler.py`): prefill costs `prefill_tokens / prefill_tokens_per_second`, a decode
step costs `decode_step_ms + decode_step_growth_ms * batch_size`.

`load_seconds` is the cold start: how long after start the server reports itself unhealthy while the
"weights load" (see `loading.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tgipool.api.modelpool import EngineKind
from tgipool.monitoring.engine_metrics import CURRENT_VERSION

TGI_VERSION = "3.3.6-dev0"  # what v3.3.6 and v3.3.7 images report (Cargo.toml was not bumped)
DEFAULT_MAX_TOTAL_TOKENS = 4096
DEFAULT_MAX_BATCH_PREFILL_TOKENS = 4096
DEFAULT_MIN_BATCH_TOTAL_TOKENS = 16384


class SettingsError(ValueError):
    """Invalid combination of limits; the message is the launcher's/router's own text."""


@dataclass(frozen=True)
class EmulatorSettings:
    model_id: str = "bigscience/bloom-560m"
    hostname: str = "0.0.0.0"  # noqa: S104 - TGI's default bind address
    port: int = 3000
    max_concurrent_requests: int = 128
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    max_batch_prefill_tokens: int | None = None
    max_batch_total_tokens: int | None = None
    max_batch_size: int | None = None
    max_client_batch_size: int = 4
    validation_workers: int = 2
    payload_limit: int = 2_000_000
    api_key: str | None = None
    disable_grammar_support: bool = False
    # Model knobs (not TGI flags): the latency model.
    prefill_tokens_per_second: float = 20000.0
    decode_step_ms: float = 20.0
    decode_step_growth_ms: float = 0.1
    # Cold start: seconds after start during which /health and generation answer 503 (loading.py).
    load_seconds: float = 0.0
    tokenizer: str | None = None  # path to a tokenizer.json; None = the approximation in tokens.py
    compute_type: str = "gpu+optimized"  # TGI's COMPUTE_TYPE default, echoed in x-compute-type
    model_pipeline_tag: str | None = "text-generation"
    model_sha: str | None = None
    sha: str | None = None
    docker_label: str | None = None
    # `--lora-adapters` as TGI parses it: `id[@rev]` is known by its id, `name=/path` by its name.
    lora_adapters: tuple[str, ...] = ()
    # The server emulated: TGI, or vLLM / SGLang (their OpenAI routes, health, errors and metric names,
    # on the same batching model); the version picks the metric names (engine_metrics.py).
    engine: EngineKind = "tgi"
    engine_version: str | None = None  # None: the engine's current version (CURRENT_VERSION)
    served_model_name: str | None = None  # vLLM/SGLang `--served-model-name`; None: model_id

    @property
    def version(self) -> str:
        return self.engine_version or CURRENT_VERSION[self.engine]

    @property
    def model_name(self) -> str:
        """The name the OpenAI routes answer to and report."""
        return self.served_model_name or self.model_id

    @property
    def adapter_ids(self) -> frozenset[str]:
        return frozenset(a.partition("=")[0] if "=" in a else a.partition("@")[0] for a in self.lora_adapters)

    def resolved(self) -> EmulatorSettings:
        """Fill the warmup-derived defaults and check the launcher/router constraints."""
        total = self.max_total_tokens
        inp = self.max_input_tokens
        if total is None:
            total = max(DEFAULT_MAX_TOTAL_TOKENS, inp + 1) if inp is not None else DEFAULT_MAX_TOTAL_TOKENS
        if inp is None:
            inp = total - 1
        if inp >= total:
            raise SettingsError(f"`max_input_tokens`({inp}) must be < `max_total_tokens`({total})")
        prefill = self.max_batch_prefill_tokens or DEFAULT_MAX_BATCH_PREFILL_TOKENS
        batch_total = self.max_batch_total_tokens or max(DEFAULT_MIN_BATCH_TOTAL_TOKENS, total, prefill)
        if total > batch_total:
            raise SettingsError(
                f"`max_total_tokens` must be <= `max_batch_total_tokens`. Given: {total} and {batch_total}"
            )
        if prefill > batch_total:
            raise SettingsError(
                "`max_batch_prefill_tokens` must be <= `max_batch_total_tokens`. "
                f"Given: {prefill} and {batch_total}"
            )
        if self.max_batch_size is not None and self.max_batch_size <= 0:
            raise SettingsError("`max_batch_size` must be > 0")
        if self.prefill_tokens_per_second <= 0:
            raise SettingsError("`prefill_tokens_per_second` must be > 0")
        if self.decode_step_ms < 0 or self.decode_step_growth_ms < 0:
            raise SettingsError("`decode_step_ms` and `decode_step_growth_ms` must be >= 0")
        if self.load_seconds < 0:
            raise SettingsError("`load_seconds` must be >= 0")
        if self.max_concurrent_requests < 0:
            raise SettingsError("`max_concurrent_requests` must be >= 0")
        return replace(
            self,
            max_total_tokens=total,
            max_input_tokens=inp,
            max_batch_prefill_tokens=prefill,
            max_batch_total_tokens=batch_total,
        )

    # Typed accessors for resolved settings (mypy cannot see that resolved() filled them).
    @property
    def input_limit(self) -> int:
        assert self.max_input_tokens is not None, "call resolved() first"
        return self.max_input_tokens

    @property
    def total_limit(self) -> int:
        assert self.max_total_tokens is not None, "call resolved() first"
        return self.max_total_tokens

    @property
    def prefill_budget(self) -> int:
        assert self.max_batch_prefill_tokens is not None, "call resolved() first"
        return self.max_batch_prefill_tokens

    @property
    def batch_token_budget(self) -> int:
        assert self.max_batch_total_tokens is not None, "call resolved() first"
        return self.max_batch_total_tokens

    @property
    def system_fingerprint(self) -> str:
        return f"{TGI_VERSION}-{self.docker_label or 'native'}"

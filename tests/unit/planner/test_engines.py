"""CapacityFeasible per engine: vLLM's gpu_memory_utilization and SGLang's mem_fraction_static split a
GPU differently from TGI's warm-up, so one spec fits a different number of sequences on each."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tgipool.api.parse import parse_pool
from tgipool.planner import assess, plan

from ..conftest import load_example

GIB = 1 << 30


def on(example: str, kind: str, **engine: Any) -> Any:
    doc = copy.deepcopy(load_example(example))
    spec = doc["spec"]["engine"]
    spec.pop("image", None)
    spec.pop("memoryFraction", None)
    spec.update(kind=kind, **engine)
    return parse_pool(doc)


# Llama-3-8B (8.03e9 parameters, bf16: 16,060,000,000 weight bytes) on a 48 GiB L40S, fp8 KV cache:
# 2 x 32 layers x 8 heads x 128 x 1 byte = 65,536 KV bytes per token; maxTotalTokens 8192.
VLLM_EXAMPLE = "vllm-llama3-8b"


def test_vllm_takes_gpu_memory_utilization_then_its_profiled_overhead() -> None:
    # 48 GiB x 0.9 = 46,385,646,796; - 16,060,000,000 weights - 2 GiB = 28,178,163,148 KV bytes,
    # taken whole; blocks of 16 tokens (1 MiB): 26,872 blocks = 429,952 tokens; 8192 = 512 blocks: 52.
    p = plan(on(VLLM_EXAMPLE, "vllm"))
    assert p.fit is not None
    assert p.cuda_memory_fraction == 0.9
    assert (p.fit.kv_budget_bytes_per_gpu, p.fit.block) == (28_178_163_148, 16)
    assert (p.fit.kv_tokens, p.fit.max_concurrent_sequences) == (429_952, 52)


def test_tgi_on_the_same_spec_keeps_its_own_numbers() -> None:
    # 48 GiB x 1.0 - weights - 2 GiB = 33,332,123,904; x 0.90 wiggle = 29,998,911,513; 1-token blocks:
    # 457,747 tokens, 55 sequences.
    p = plan(on(VLLM_EXAMPLE, "tgi"))
    assert p.fit is not None
    assert (p.fit.kv_budget_bytes_per_gpu, p.fit.kv_tokens, p.fit.max_concurrent_sequences) == (
        29_998_911_513,
        457_747,
        55,
    )


def test_sglang_static_fraction_holds_weights_and_kv() -> None:
    # Qwen2.5-7B (7.6e9 parameters, fp8: 7.6e9 bytes, 3.8e9 per GPU at tp 2) on 24 GiB L4s:
    # 24 GiB x 0.85 = 21,904,333,209; - 3.8e9 - 1 GiB context = 17,030,591,385 KV bytes; 2 KV heads per
    # GPU: 2 x 28 x 2 x 128 x 2 = 28,672 bytes per token: 593,979 tokens, 36 sequences of 16384.
    p = plan(on("sglang-qwen-7b", "sglang"))
    assert p.fit is not None
    assert p.cuda_memory_fraction == 0.85
    assert (p.fit.kv_budget_bytes_per_gpu, p.fit.kv_bytes_per_token_per_gpu) == (17_030_591_385, 28_672)
    assert (p.fit.kv_tokens, p.fit.max_concurrent_sequences) == (593_979, 36)
    a = assess(on("sglang-qwen-7b", "sglang"))
    assert (a.status, a.reason) == ("True", "Fits")
    assert "36 sequences of maxTotalTokens 16384" in a.message


@pytest.mark.parametrize(
    ("kind", "fraction", "reason"), [("vllm", 0.7, "WeightsDoNotFit"), ("vllm", 0.75, "Fits")]
)
def test_memory_fraction_decides_feasibility_on_a_small_gpu(kind: str, fraction: float, reason: str) -> None:
    # The 8B model (16.06e9 bytes) on 24 GiB: x 0.70 = 18,038,862,643 < weights + 2 GiB (18,207,483,648);
    # x 0.75 = 19,327,352,832 leaves 1,119,869,184 bytes: 533 blocks of 2 MiB = 8,528 tokens: one 8192.
    doc = copy.deepcopy(load_example(VLLM_EXAMPLE))
    doc["spec"]["gpu"]["memoryGiB"] = 24
    doc["spec"]["engine"]["memoryFraction"] = fraction
    doc["spec"]["engine"].pop("kvCacheDtype")  # bf16 KV: 131,072 bytes per token
    a = assess(parse_pool(doc))
    assert (a.status, a.reason) == ("True" if reason == "Fits" else "False", reason)
    if reason == "Fits":
        assert a.plan.fit is not None and a.plan.fit.kv_tokens == 8_528
    else:
        assert "over the 16.80 GiB usable of 24 GiB" in a.message


def test_tgi_memory_fraction_still_comes_from_extra_args() -> None:
    p = plan(on(VLLM_EXAMPLE, "tgi", extraArgs=["--cuda-memory-fraction=0.8"]))
    assert p.cuda_memory_fraction == 0.8
    assert p.fit is not None and p.fit.kv_budget_bytes_per_gpu == int(
        (int(48 * GIB * 0.8) - 16_060_000_000 - 2 * GIB) * 0.9
    )

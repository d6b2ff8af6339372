"""CapacityFeasible: the verdict, the boundary one token either side, what the message says fits."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tgipool.api.parse import parse_pool
from tgipool.planner import assess

from ..conftest import load_example
from .configs import LLAMA_3_8B, QWEN2_5_7B


def pool(**spec: Any) -> Any:
    doc = copy.deepcopy(load_example("llama3-8b-ru-short"))
    for key, value in spec.items():
        if value is None:
            doc["spec"].pop(key, None)
        elif isinstance(value, dict) and isinstance(doc["spec"].get(key), dict):
            doc["spec"][key] = {**doc["spec"][key], **value}
        else:
            doc["spec"][key] = value
    return parse_pool(doc)


def l4_like(max_total: int, **extra: Any) -> Any:
    # Llama-3-8B from the spec (parametersB 8.0 -> 16,000,000,000 weight bytes) on a 24 GiB GPU.
    limits = {"maxInputTokens": 4096, "maxTotalTokens": max_total, "maxBatchPrefillTokens": 4096}
    return pool(profile="custom", limits=limits, gpu={"memoryGiB": 24}, **extra)


def test_llama3_8b_on_h100_profile_short() -> None:
    # 80 GiB = 85,899,345,920; - 16e9 weights - 2 GiB overhead = 67,751,862,272; x 0.90
    # = 60,976,676,044 KV bytes; / 131072 = 465,215 tokens; / 4096 = 113 sequences.
    a = assess(pool())
    assert (a.status, a.reason, a.feasible, a.refused) == ("True", "Fits", True, False)
    assert a.capacity == {
        "kvBytesPerToken": 131072,
        "weightsBytes": 16 * 10**9,
        "maxConcurrentSequences": 113,
    }
    assert a.plan.fit is not None and a.plan.fit.kv_tokens == 465_215
    assert "113 sequences of maxTotalTokens 4096" in a.message
    cond = a.condition(observed_generation=3)
    assert (cond.type, cond.status, cond.reason, cond.observed_generation) == (
        "CapacityFeasible",
        "True",
        "Fits",
        3,
    )
    assert a.capacity_status().model_dump(by_alias=True) == {
        "kvBytesPerToken": 131072,
        "weightsBytes": 16 * 10**9,
        "maxConcurrentSequences": 113,
    }


def test_with_config_json_the_exact_parameter_count_is_used() -> None:
    # 8,030,261,248 x 2 = 16,060,522,496 weight bytes; 85,899,345,920 - that - 2,147,483,648
    # = 67,691,339,776; x 0.9 = 60,922,205,798; / 131072 = 464,799 tokens -> 113 sequences.
    a = assess(pool(), LLAMA_3_8B)
    assert a.capacity == {
        "kvBytesPerToken": 131072,
        "weightsBytes": 16_060_522_496,
        "maxConcurrentSequences": 113,
    }
    assert a.plan.fit is not None and a.plan.fit.kv_tokens == 464_799


def test_sequence_boundary_one_token_either_side() -> None:
    # 24 GiB = 25,769,803,776; - 16e9 - 2,147,483,648 = 7,622,320,128; x 0.9 = 6,860,088,115;
    # / 131072 = 52,338.49 -> 52,338 tokens: one sequence of 52,338 fits, of 52,339 does not.
    fits = assess(l4_like(52_338))
    assert (fits.status, fits.reason, fits.capacity["maxConcurrentSequences"]) == ("True", "Fits", 1)
    over = assess(l4_like(52_339))
    assert (over.status, over.reason, over.refused) == ("False", "SequenceDoesNotFit", True)
    assert over.capacity["maxConcurrentSequences"] == 0
    assert "the largest maxTotalTokens that fits is 52338" in over.message
    # numShard 2: 8e9 weights and 65536 KV bytes per GPU -> 214,539 tokens; fp8 KV: 65536 per
    # token -> 104,676 tokens. Both hold 52,339.
    assert "numShard 2" in over.message
    assert "kvCacheDtype fp8_e4m3fn" in over.message


def test_fp8_kv_cache_doubles_the_tokens() -> None:
    plain = assess(l4_like(8192))
    fp8 = assess(l4_like(8192, engine={"kvCacheDtype": "fp8_e5m2"}))
    assert plain.capacity["kvBytesPerToken"] == 131072
    assert fp8.capacity["kvBytesPerToken"] == 65536
    assert plain.plan.fit is not None and fp8.plan.fit is not None
    # 6,860,088,115 / 65536 = 104,676 tokens; / 8192 = 12 sequences (plain: 52,338 / 8192 = 6).
    assert (plain.plan.fit.kv_tokens, fp8.plan.fit.kv_tokens) == (52_338, 104_676)
    assert (plain.capacity["maxConcurrentSequences"], fp8.capacity["maxConcurrentSequences"]) == (6, 12)


def test_weights_boundary() -> None:
    # 16 GiB = 17,179,869,184 - 2 GiB overhead = 15,032,385,536 bytes for weights:
    # 7,516,192,768 parameters at 2 bytes fit exactly (and leave no KV cache), one more does not.
    arch = {"numLayers": 32, "numKeyValueHeads": 8, "headDim": 128}
    exact = pool(gpu={"memoryGiB": 16}, model={"architecture": {**arch, "parametersB": 7.516192768}})
    a = assess(exact)
    assert (a.status, a.reason) == ("False", "SequenceDoesNotFit")
    assert a.capacity["weightsBytes"] == 15_032_385_536
    over = pool(gpu={"memoryGiB": 16}, model={"architecture": {**arch, "parametersB": 7.516192769}})
    b = assess(over)
    assert (b.status, b.reason) == ("False", "WeightsDoNotFit")
    assert b.capacity["weightsBytes"] == 15_032_385_538
    assert b.capacity["maxConcurrentSequences"] == 0
    # 2 shards: 7.5 GB weights and 14.9 GiB free per GPU; fp8: 7.5 GB on one GPU.
    assert "numShard 2" in b.message
    assert "quantize fp8" in b.message


def test_llama3_70b_bf16_needs_shards_or_quantization() -> None:
    # 70.6e9 x 2 = 141.2e9 bytes: over one 80 GiB GPU. On 2 shards: 85,899,345,920 - 70.6e9
    # - 2,147,483,648 = 13,151,862,272; x 0.9 = 11,836,676,044; / 163840 per GPU = 72,245 tokens.
    arch = {"numLayers": 80, "numKeyValueHeads": 8, "headDim": 128, "parametersB": 70.6}
    a = assess(pool(model={"architecture": arch}))
    assert (a.status, a.reason) == ("False", "WeightsDoNotFit")
    assert "numShard 2" in a.message
    assert "quantize fp8" in a.message
    assert a.capacity["weightsBytes"] == 141_200_000_000
    b = assess(pool(model={"architecture": arch}, engine={"numShard": 2}))
    assert (b.status, b.reason) == ("True", "Fits")
    assert b.plan.fit is not None and b.plan.fit.kv_bytes_per_token_per_gpu == 163840
    assert b.plan.fit.kv_tokens == 72_245


def test_awq_example_pool() -> None:
    # examples/balanced-awq: 70.6e9 x 0.51953125 / 2 shards = 18,339,453,125 bytes per GPU.
    a = assess(parse_pool(load_example("balanced-awq")))
    assert (a.status, a.capacity["weightsBytes"]) == ("True", 18_339_453_125)
    assert a.capacity["kvBytesPerToken"] == 327680


def test_prefill_must_fit_the_kv_cache() -> None:
    limits = {"maxInputTokens": 4096, "maxTotalTokens": 8192, "maxBatchPrefillTokens": 52_339}
    a = assess(pool(profile="custom", limits=limits, gpu={"memoryGiB": 24}))
    assert (a.status, a.reason) == ("False", "PrefillDoesNotFit")
    assert "the largest maxBatchPrefillTokens that fits is 52338" in a.message


def test_architecture_unknown_is_unknown_not_true() -> None:
    a = assess(pool(model={"architecture": None}))
    assert (a.status, a.reason, a.refused) == ("Unknown", "ArchitectureUnknown", False)
    assert a.capacity == {"kvBytesPerToken": None, "weightsBytes": None, "maxConcurrentSequences": None}
    assert "numLayers, numKeyValueHeads, headDim, parametersB" in a.message
    partial = assess(pool(model={"architecture": {"numLayers": 32, "numKeyValueHeads": 8, "headDim": 128}}))
    assert (partial.status, partial.capacity["kvBytesPerToken"]) == ("Unknown", 131072)
    assert "parametersB" in partial.message
    # config.json fills every gap
    full = assess(pool(model={"architecture": None}), QWEN2_5_7B)
    assert (full.status, full.capacity["kvBytesPerToken"]) == ("True", 57344)


def test_gpu_memory_unknown_is_unknown() -> None:
    a = assess(pool(gpu={"memoryGiB": None, "product": "x"}))
    assert (a.status, a.reason) == ("Unknown", "GpuMemoryUnknown")
    assert "spec.gpu.memoryGiB is unset" in a.message
    assert a.capacity == {
        "kvBytesPerToken": 131072,
        "weightsBytes": 16 * 10**9,
        "maxConcurrentSequences": None,
    }


@pytest.mark.parametrize(
    "extra",
    [["--cuda-memory-fraction=0.5"], ["--cuda-memory-fraction", "0.5"], ["--cuda-memory-fraction 0.5"]],
)
def test_cuda_memory_fraction_from_extra_args(extra: list[str]) -> None:
    # 80 GiB x 0.5 - 16e9 - 2 GiB = 24,802,189,312; x 0.9 = 22,321,970,380; / 131072 = 170,303.
    a = assess(pool(engine={"extraArgs": extra}))
    assert a.plan.cuda_memory_fraction == 0.5
    assert a.plan.fit is not None and a.plan.fit.kv_tokens == 170_303


def test_wiggle_room_from_env() -> None:
    a = assess(pool(engine={"env": [{"name": "TGI_WIGGLE_ROOM", "value": "0.5"}]}))
    # 67,751,862,272 x 0.5 = 33,875,931,136; / 131072 = 258,452.6 -> 258,452.
    assert a.plan.fit is not None and a.plan.fit.kv_tokens == 258_452


def test_spec_and_config_disagreeing_is_noted() -> None:
    doc_arch = {"numLayers": 30, "numKeyValueHeads": 8, "headDim": 128, "parametersB": 8.0}
    a = assess(pool(model={"architecture": doc_arch}), LLAMA_3_8B)
    assert a.plan.architecture.num_layers == 30
    assert any("numLayers differs from config.json (30 vs 32)" in r for r in a.reasons)


def test_quantize_taken_from_config_when_unset() -> None:
    cfg = {**LLAMA_3_8B, "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    a = assess(pool(engine={"dtype": None}), cfg)
    assert a.plan.quantize == "awq"
    assert a.capacity["weightsBytes"] == 5_727_460_432

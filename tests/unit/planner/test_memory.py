"""KV bytes, parameter counts and weight bytes of published architectures, worked by hand."""

from __future__ import annotations

import pytest

from tgipool.planner import memory
from tgipool.planner.architecture import architecture_from_config

from .configs import LLAMA_3_8B, LLAMA_3_70B, MISTRAL_7B, QWEN2_5_7B

GIB = 1 << 30


@pytest.mark.parametrize(
    ("config", "layers", "kv_heads", "head_dim", "bf16", "fp8"),
    [
        # Llama-3-8B: 2 x 32 layers x 8 KV heads x 128 x 2 bytes = 131072; fp8: x 1 byte = 65536.
        (LLAMA_3_8B, 32, 8, 128, 131072, 65536),
        # Llama-3-70B: 2 x 80 x 8 x 128 x 2 = 327680; fp8 163840.
        (LLAMA_3_70B, 80, 8, 128, 327680, 163840),
        # Mistral-7B: 2 x 32 x 8 x 128 x 2 = 131072; fp8 65536.
        (MISTRAL_7B, 32, 8, 128, 131072, 65536),
        # Qwen2.5-7B: head_dim = 3584 / 28 = 128; 2 x 28 x 4 x 128 x 2 = 57344; fp8 28672.
        (QWEN2_5_7B, 28, 4, 128, 57344, 28672),
    ],
)
def test_kv_bytes_per_token(
    config: dict[str, object], layers: int, kv_heads: int, head_dim: int, bf16: int, fp8: int
) -> None:
    arch = architecture_from_config(config)
    assert (arch.num_layers, arch.num_key_value_heads, arch.head_dim) == (layers, kv_heads, head_dim)
    assert memory.kv_bytes_per_token(arch, memory.kv_element_bytes(None, "bfloat16")) == bf16
    assert memory.kv_bytes_per_token(arch, memory.kv_element_bytes(None, "float16")) == bf16
    assert memory.kv_bytes_per_token(arch, memory.kv_element_bytes("fp8_e4m3fn")) == fp8
    assert memory.kv_bytes_per_token(arch, memory.kv_element_bytes("fp8_e5m2", "bfloat16")) == fp8


def test_gqa_uses_kv_heads_not_attention_heads() -> None:
    arch = architecture_from_config(LLAMA_3_8B)
    # The page's formula with all 32 heads: 2 x 32 x 32 x 128 x 2 = 524288, 4x too much.
    assert memory.kv_bytes_per_token(arch, 2, kv_heads=32) == 524288
    assert memory.kv_bytes_per_token(arch, 2) == 524288 // 4


def test_kv_heads_split_over_shards() -> None:
    # Llama-3-70B on 2 shards: 8 / 2 = 4 heads per GPU -> 2 x 80 x 4 x 128 x 2 = 163840.
    arch = architecture_from_config(LLAMA_3_70B)
    assert memory.kv_bytes_per_token(arch, 2, memory.kv_heads_per_gpu(arch, 2)) == 163840
    # Qwen2.5-7B has 4 KV heads; on 8 shards each GPU still caches one (replicated):
    # 2 x 28 x 1 x 128 x 2 = 14336.
    qwen = architecture_from_config(QWEN2_5_7B)
    assert memory.kv_heads_per_gpu(qwen, 8) == 1
    assert memory.kv_bytes_per_token(qwen, 2, memory.kv_heads_per_gpu(qwen, 8)) == 14336


@pytest.mark.parametrize(
    ("config", "params", "embedding"),
    [
        # Llama-3-8B. Embedding + untied head: 2 x 128256 x 4096 = 1,050,673,152.
        # Per layer: q,o 2 x 4096^2 = 33,554,432; k,v 2 x 4096 x 1024 = 8,388,608;
        # MLP 3 x 4096 x 14336 = 176,160,768; norms 8192 -> 218,112,000; x 32 = 6,979,584,000.
        # + final norm 4096 = 8,030,261,248 (the published count).
        (LLAMA_3_8B, 8_030_261_248, 1_050_673_152),
        # Llama-3-70B: 2 x 128256 x 8192 = 2,101,346,304; per layer 2 x 8192^2 + 2 x 8192 x 1024
        # + 3 x 8192 x 28672 + 16384 = 855,654,400; x 80 = 68,452,352,000; + 8192 = 70,553,706,496.
        (LLAMA_3_70B, 70_553_706_496, 2_101_346_304),
        # Mistral-7B: 2 x 32000 x 4096 = 262,144,000; layers as Llama-3-8B 6,979,584,000; + 4096
        # = 7,241,732,096.
        (MISTRAL_7B, 7_241_732_096, 262_144_000),
        # Qwen2.5-7B: 2 x 152064 x 3584 = 1,089,994,752. Per layer: q,o 2 x 3584^2 = 25,690,112;
        # k,v 2 x 3584 x 512 = 3,670,016; q/k/v biases 3584 + 2 x 512 = 4608; MLP 3 x 3584 x 18944
        # = 203,685,888; norms 7168 -> 233,057,792; x 28 = 6,525,618,176; + 3584 = 7,615,616,512.
        (QWEN2_5_7B, 7_615_616_512, 1_089_994_752),
    ],
)
def test_parameter_count_from_config(config: dict[str, object], params: int, embedding: int) -> None:
    arch = architecture_from_config(config)
    assert arch.parameters == params
    assert arch.embedding_parameters == embedding


def test_weight_bytes_per_parameter() -> None:
    assert memory.weight_bytes_per_param(None, "bfloat16") == 2
    assert memory.weight_bytes_per_param(None, "float16") == 2
    assert memory.weight_bytes_per_param(None) == 2
    for one in ("fp8", "eetq", "bitsandbytes"):
        assert memory.weight_bytes_per_param(one) == 1
    # int4, groups of 128 with an fp16 scale and a 4-bit zero: 0.5 + 2.5 / 128 = 0.51953125.
    for int4 in ("awq", "gptq", "marlin", "exl2", "compressed-tensors"):
        assert memory.weight_bytes_per_param(int4) == 0.51953125
    # nf4/fp4: 0.5 + 1/64 (8-bit absmax per 64) + 4/16384 (fp32 per 256 blocks) = 0.515869140625.
    assert memory.weight_bytes_per_param("bitsandbytes-nf4") == 0.515869140625
    assert memory.weight_bytes_per_param("bitsandbytes-fp4") == 0.515869140625
    # GPTQ 8-bit, group 64: 1 + (2 + 1) / 64 = 1.046875.
    assert memory.weight_bytes_per_param("gptq", bits=8, group_size=64) == 1.046875
    with pytest.raises(ValueError, match="unknown quantization"):
        memory.weight_bytes_per_param("int3")


def test_weight_bytes_of_published_models() -> None:
    # Llama-3-8B bf16: 8,030,261,248 x 2 = 16,060,522,496.
    llama8 = architecture_from_config(LLAMA_3_8B)
    assert memory.weights_bytes_total(llama8, None, "bfloat16") == 16_060_522_496
    # Llama-3-8B AWQ: embedding/head stay 16-bit: 1,050,673,152 x 2 = 2,101,346,304; the other
    # 6,979,588,096 x 0.51953125 = 3,626,114,128; total 5,727,460,432.
    assert memory.weights_bytes_total(llama8, "awq") == 5_727_460_432
    # Llama-3-70B fp8: 68,452,360,192 x 1 + 2,101,346,304 x 2 = 72,655,052,800; per GPU on 2
    # shards 36,327,526,400.
    llama70 = architecture_from_config(LLAMA_3_70B)
    assert memory.weights_bytes_total(llama70, "fp8") == 72_655_052_800
    assert memory.weights_bytes_per_gpu(llama70, "fp8", None, 2) == 36_327_526_400
    # Mistral-7B nf4: 6,979,588,096 x 2113/4096 = 3,600,554,113 + 262,144,000 x 2 = 4,124,842,113.
    mistral = architecture_from_config(MISTRAL_7B)
    assert memory.weights_bytes_total(mistral, "bitsandbytes-nf4") == 4_124_842_113
    # Qwen2.5-7B bf16: 7,615,616,512 x 2 = 15,231,233,024.
    qwen = architecture_from_config(QWEN2_5_7B)
    assert memory.weights_bytes_total(qwen, None, "bfloat16") == 15_231_233_024


def test_prequantized_config_sets_bits_and_group() -> None:
    cfg = {**LLAMA_3_8B, "quantization_config": {"quant_method": "gptq", "bits": 8, "group_size": 64}}
    arch = architecture_from_config(cfg)
    assert (arch.quant_method, arch.quant_bits, arch.quant_group_size) == ("gptq", 8.0, 64)
    # 6,979,588,096 x (1 + 3/64) = 6,979,588,096 + 327,168,192 = 7,306,756,288;
    # + 2,101,346,304 (16-bit embedding/head) = 9,408,102,592.
    assert memory.weights_bytes_total(arch, "gptq") == 9_408_102_592
    bnb = architecture_from_config(
        {**LLAMA_3_8B, "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}
    )
    assert bnb.quant_method == "bitsandbytes-nf4"


def test_text_config_of_a_multimodal_model() -> None:
    arch = architecture_from_config({"model_type": "llava", "text_config": QWEN2_5_7B})
    assert (arch.num_layers, arch.num_key_value_heads, arch.head_dim) == (28, 4, 128)


def test_kv_budget_and_blocks() -> None:
    # 80 GiB x 1.0 - 16e9 weights - 2 GiB overhead = 85,899,345,920 - 16,000,000,000
    # - 2,147,483,648 = 67,751,862,272; x 0.90 = 60,976,676,044.8 -> 60,976,676,044.
    assert memory.kv_budget_bytes(80, 16 * 10**9) == 60_976_676_044
    # --cuda-memory-fraction 0.5: 42,949,672,960 - 18,147,483,648 = 24,802,189,312 x 0.9.
    assert memory.kv_budget_bytes(80, 16 * 10**9, fraction=0.5) == 22_321_970_380
    assert memory.kv_budget_bytes(16, 16 * 10**9) == 0
    assert memory.block_size(128) == 1
    assert memory.block_size(96) == 256
    assert memory.tokens_in_blocks(4097, 256) == 4352

"""The vLLM command line of a pool (`vllm serve`): typed flags first, then the escape hatch."""

from __future__ import annotations

from tgipool.api.modelpool import ModelPool

PORT = 8000  # vLLM's own default
# vLLM names TGI's fp8_e4m3fn (the torch dtype) fp8_e4m3; the bytes are the same.
KV_CACHE_DTYPES = {"fp8_e4m3fn": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"}


def lora_modules(pool: ModelPool) -> list[str]:
    """`--lora-modules name=path ...`: a Hub repo id or a path in the cache; clients ask for `name`."""
    adapters = pool.spec.engine.lora_adapters
    if not adapters:
        return []
    return ["--enable-lora", "--lora-modules", *(f"{a.name}={a.id}" for a in adapters)]


def vllm_args(pool: ModelPool, port: int = PORT) -> list[str]:
    spec, lim, engine = pool.spec, pool.limits, pool.spec.engine
    args = [
        f"--model={spec.model.id}",
        f"--revision={spec.model.revision}",
        f"--served-model-name={pool.served_name}",
        f"--tensor-parallel-size={engine.num_shard}",
        # vLLM has no input limit of its own: the gateway refuses prompts over maxInputTokens.
        f"--max-model-len={lim.max_total_tokens}",
        f"--max-num-batched-tokens={lim.max_batch_prefill_tokens}",
        f"--max-num-seqs={lim.max_concurrent_requests}",
        f"--gpu-memory-utilization={engine.effective_memory_fraction}",
        "--host=0.0.0.0",
        f"--port={port}",
    ]
    if engine.quantize:
        args.append(f"--quantization={engine.quantize}")
    if engine.dtype:
        args.append(f"--dtype={engine.dtype}")
    if engine.kv_cache_dtype:
        args.append(f"--kv-cache-dtype={KV_CACHE_DTYPES[engine.kv_cache_dtype]}")
    return args + lora_modules(pool) + list(engine.extra_args)

"""The SGLang command line of a pool (`python3 -m sglang.launch_server`): typed flags, then extraArgs."""

from __future__ import annotations

from tgipool.api.modelpool import ModelPool
from tgipool.desired.vllm_args import KV_CACHE_DTYPES  # SGLang, like vLLM, names fp8_e4m3fn fp8_e4m3

PORT = 30000  # SGLang's own default


def lora_paths(pool: ModelPool) -> list[str]:
    """`--lora-paths name=path ...`: a Hub repo id or a path in the cache; clients ask for `name`."""
    adapters = pool.spec.engine.lora_adapters
    if not adapters:
        return []
    return ["--lora-paths", *(f"{a.name}={a.id}" for a in adapters)]


def sglang_args(pool: ModelPool, port: int = PORT) -> list[str]:
    spec, lim, engine = pool.spec, pool.limits, pool.spec.engine
    args = [
        f"--model-path={spec.model.id}",
        f"--revision={spec.model.revision}",
        f"--served-model-name={pool.served_name}",
        f"--tp-size={engine.num_shard}",
        # SGLang has no input limit of its own: the gateway refuses prompts over maxInputTokens.
        f"--context-length={lim.max_total_tokens}",
        # The prefill budget bounds both one prefill batch and one chunk of a long prompt.
        f"--max-prefill-tokens={lim.max_batch_prefill_tokens}",
        f"--chunked-prefill-size={lim.max_batch_prefill_tokens}",
        f"--max-running-requests={lim.max_concurrent_requests}",
        f"--mem-fraction-static={engine.effective_memory_fraction}",
        "--host=0.0.0.0",  # SGLang listens on 127.0.0.1 by default
        f"--port={port}",
        "--enable-metrics",  # /metrics is off by default
    ]
    if engine.quantize:
        args.append(f"--quantization={engine.quantize}")
    if engine.dtype:
        args.append(f"--dtype={engine.dtype}")
    if engine.kv_cache_dtype:
        args.append(f"--kv-cache-dtype={KV_CACHE_DTYPES[engine.kv_cache_dtype]}")
    return args + lora_paths(pool) + list(engine.extra_args)

"""The TGI launcher command line of a pool: typed flags first, then the escape hatch."""

from __future__ import annotations

from tgipool.api.modelpool import ModelPool
from tgipool.config import OperatorConfig


def lora_arg(pool: ModelPool) -> str | None:
    """`--lora-adapters`: `id[@rev]` for Hub adapters (clients pass the id), `name=/path` for local ones."""
    parts = []
    for a in pool.spec.engine.lora_adapters:
        if a.id.startswith("/"):
            parts.append(f"{a.name}={a.id}")
        else:
            parts.append(f"{a.id}@{a.revision}" if a.revision else a.id)
    return ",".join(parts) or None


def adapter_ids(pool: ModelPool) -> dict[str, str]:
    """Adapter name -> the id a request names it by at TGI (`adapter_id`, or the OpenAI `model`)."""
    return {a.name: (a.name if a.id.startswith("/") else a.id) for a in pool.spec.engine.lora_adapters}


def tgi_args(pool: ModelPool, cfg: OperatorConfig) -> list[str]:
    spec = pool.spec
    lim = pool.limits
    args = [
        f"--model-id={spec.model.id}",
        f"--revision={spec.model.revision}",
        f"--num-shard={spec.engine.num_shard}",
        f"--max-input-tokens={lim.max_input_tokens}",
        f"--max-total-tokens={lim.max_total_tokens}",
        f"--max-batch-prefill-tokens={lim.max_batch_prefill_tokens}",
        f"--max-concurrent-requests={lim.max_concurrent_requests}",
        f"--port={cfg.container_port}",
    ]
    if spec.engine.quantize:
        args.append(f"--quantize={spec.engine.quantize}")
    if spec.engine.dtype:
        args.append(f"--dtype={spec.engine.dtype}")
    if spec.engine.kv_cache_dtype:
        args.append(f"--kv-cache-dtype={spec.engine.kv_cache_dtype}")
    lora = lora_arg(pool)
    if lora:
        args.append(f"--lora-adapters={lora}")
    return args + list(spec.engine.extra_args)

"""The shape of a model that matters for memory: from `spec.model.architecture` or a `config.json`.

Only what the KV cache and the weights need: layers, key-value heads (grouped-query attention keeps
fewer KV heads than query heads, and only those are cached), head dimension, and the parameter count,
split into the embedding/head parameters (kept in 16-bit by every TGI quantization) and the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tgipool.api.modelpool import Architecture


@dataclass(frozen=True)
class ModelArchitecture:
    num_layers: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    num_attention_heads: int | None = None
    # Total parameters; None when neither the spec nor the config tells.
    parameters: int | None = None
    # Parameters of the token embedding and the LM head (counted once when tied); None = unknown,
    # in which case quantization is assumed to cover every parameter (a lower bound on weight bytes).
    embedding_parameters: int | None = None
    # `quantization_config` of a pre-quantized checkpoint, as TGI reads it when --quantize is unset.
    quant_method: str | None = None
    quant_bits: float | None = None
    quant_group_size: int | None = None
    model_type: str | None = None
    source: str = "spec"

    @property
    def kv_known(self) -> bool:
        return None not in (self.num_layers, self.num_key_value_heads, self.head_dim)

    def missing(self) -> list[str]:
        """camelCase names of `spec.model.architecture` fields still unknown."""
        fields = {
            "numLayers": self.num_layers,
            "numKeyValueHeads": self.num_key_value_heads,
            "headDim": self.head_dim,
            "parametersB": self.parameters,
        }
        return [name for name, value in fields.items() if value is None]


def architecture_from_spec(arch: Architecture | None) -> ModelArchitecture:
    if arch is None:
        return ModelArchitecture()
    params = round(arch.parameters_b * 1e9) if arch.parameters_b is not None else None
    return ModelArchitecture(
        num_layers=arch.num_layers,
        num_key_value_heads=arch.num_key_value_heads,
        head_dim=arch.head_dim,
        parameters=params,
        source="spec",
    )


def _int(cfg: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def estimate_parameters(cfg: Mapping[str, Any]) -> tuple[int, int] | None:
    """(total, embedding+head) parameters of a Llama-style decoder, from its config.

    Per layer: q and o projections (hidden x heads*head_dim each), k and v (hidden x kv_heads*head_dim
    each), a gated MLP (3 x hidden x intermediate, times the experts for a Mixtral-style MoE, plus the
    router), two RMSNorm vectors; biases on q/k/v for Qwen2 and on q/k/v/o with `attention_bias`.
    Plus the embedding (vocab x hidden), the LM head unless tied, and the final norm.
    Checked against published counts: Llama-3-8B 8,030,261,248; Mistral-7B 7,241,732,096;
    Qwen2.5-7B 7,615,616,512; Llama-3-70B 70,553,706,496.
    """
    hidden = _int(cfg, "hidden_size", "n_embd", "d_model")
    layers = _int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _int(cfg, "num_attention_heads", "n_head")
    inter = _int(cfg, "intermediate_size", "ffn_dim")
    vocab = _int(cfg, "vocab_size")
    if None in (hidden, layers, heads, inter, vocab):
        return None
    assert hidden and layers and heads and inter and vocab
    kv = _int(cfg, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = _int(cfg, "head_dim") or hidden // heads
    q_out, kv_out = heads * head_dim, kv * head_dim
    attn = 2 * hidden * q_out + 2 * hidden * kv_out
    model_type = str(cfg.get("model_type", ""))
    if cfg.get("attention_bias") is True:
        attn += q_out + 2 * kv_out + hidden
    elif model_type.startswith("qwen2"):
        attn += q_out + 2 * kv_out
    experts = _int(cfg, "num_local_experts", "num_experts")
    if experts:
        moe_inter = _int(cfg, "moe_intermediate_size") or inter
        mlp = experts * 3 * hidden * moe_inter + hidden * experts
    else:
        mlp = 3 * hidden * inter
    per_layer = attn + mlp + 2 * hidden
    embedding = vocab * hidden * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return layers * per_layer + embedding + hidden, embedding


def _quantization(cfg: Mapping[str, Any]) -> tuple[str | None, float | None, int | None]:
    qc = cfg.get("quantization_config")
    if not isinstance(qc, Mapping):
        return None, None, None
    method = qc.get("quant_method")
    method = str(method) if method else None
    if method == "bitsandbytes" and qc.get("load_in_4bit"):
        method = "bitsandbytes-fp4" if qc.get("bnb_4bit_quant_type") == "fp4" else "bitsandbytes-nf4"
    bits = qc.get("bits")
    group = qc.get("group_size", qc.get("q_group_size"))
    groups = qc.get("config_groups")
    if method == "compressed-tensors" and isinstance(groups, Mapping):
        for group_cfg in groups.values():
            weights = group_cfg.get("weights") if isinstance(group_cfg, Mapping) else None
            if isinstance(weights, Mapping):
                bits = weights.get("num_bits", bits)
                group = weights.get("group_size", group)
                break
    return (
        method,
        float(bits) if isinstance(bits, int | float) and not isinstance(bits, bool) else None,
        int(group) if isinstance(group, int) and not isinstance(group, bool) else None,
    )


def architecture_from_config(config: Mapping[str, Any]) -> ModelArchitecture:
    """From a HuggingFace `config.json` (a multimodal config's `text_config` when the top has no layers)."""
    cfg: Mapping[str, Any] = config
    text = config.get("text_config")
    if _int(config, "num_hidden_layers", "n_layer", "num_layers") is None and isinstance(text, Mapping):
        cfg = {**text, "quantization_config": config.get("quantization_config")}
    heads = _int(cfg, "num_attention_heads", "n_head")
    hidden = _int(cfg, "hidden_size", "n_embd", "d_model")
    kv = _int(cfg, "num_key_value_heads", "num_kv_heads")
    if kv is None and cfg.get("multi_query") is True:
        kv = 1
    head_dim = _int(cfg, "head_dim")
    if head_dim is None and heads and hidden:
        head_dim = hidden // heads
    counted = estimate_parameters(cfg)
    method, bits, group = _quantization(cfg)
    return ModelArchitecture(
        num_layers=_int(cfg, "num_hidden_layers", "n_layer", "num_layers"),
        num_key_value_heads=kv or heads,
        head_dim=head_dim,
        num_attention_heads=heads,
        parameters=counted[0] if counted else None,
        embedding_parameters=counted[1] if counted else None,
        quant_method=method,
        quant_bits=bits,
        quant_group_size=group,
        model_type=str(cfg["model_type"]) if cfg.get("model_type") else None,
        source="config.json",
    )


def merge(spec: ModelArchitecture, config: ModelArchitecture | None) -> tuple[ModelArchitecture, list[str]]:
    """Spec values win; the config fills the gaps. Returns notes on every disagreement."""
    if config is None:
        return spec, []
    notes = []
    merged = config
    for field, label in (
        ("num_layers", "numLayers"),
        ("num_key_value_heads", "numKeyValueHeads"),
        ("head_dim", "headDim"),
        ("parameters", "parametersB"),
    ):
        ours, theirs = getattr(spec, field), getattr(config, field)
        if ours is None:
            continue
        if theirs is not None and ours != theirs:
            if field == "parameters":
                if abs(ours - theirs) <= 0.01 * theirs:
                    continue
                shown = f"{ours / 1e9:g}B vs {theirs / 1e9:.3f}B"
            else:
                shown = f"{ours} vs {theirs}"
            notes.append(f"spec.model.architecture.{label} differs from config.json ({shown}); the spec wins")
        merged = replace(merged, **{field: ours})
        if field == "parameters" and theirs is not None and ours != theirs:
            merged = replace(merged, embedding_parameters=None)
    return replace(merged, source="spec+config.json"), notes

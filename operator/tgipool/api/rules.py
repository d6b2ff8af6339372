"""Validation rules shared by the CRD (CEL) and the Python models: one message each."""

from __future__ import annotations

import re
from typing import Any

from tgipool.api.profiles import PRESETS

Rule = dict[str, Any]

# Longest child name is NAME + "-fetch-" + 8 hex characters; every child name must fit in 63.
FETCH_SUFFIX_LEN = len("-fetch-") + 8
MAX_POOL_NAME = 63 - FETCH_SUFFIX_LEN

# TGI launcher flags the typed spec already sets (other engines: api/engine.py); repeating them in
# extraArgs would make two sources of truth.
TYPED_FLAGS = (
    "model-id",
    "revision",
    "num-shard",
    "sharded",
    "quantize",
    "dtype",
    "kv-cache-dtype",
    "max-input-tokens",
    "max-input-length",
    "max-total-tokens",
    "max-batch-prefill-tokens",
    "max-concurrent-requests",
    "lora-adapters",
    "port",
    "hostname",
    "huggingface-hub-cache",
    "usage-stats",
)
TYPED_FLAG_REGEX = "^--(" + "|".join(TYPED_FLAGS) + ")(=.*)?$"
TOKEN_ENV_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")


def typed_flag_of(arg: str) -> str | None:
    m = re.match(TYPED_FLAG_REGEX, arg)
    return f"--{m.group(1)}" if m else None


def _cel_limit(field: str, attr: str) -> str:
    """CEL for the effective value of one limit: explicit, else the profile preset."""
    short, bal, long_ = (getattr(PRESETS[p], attr) for p in ("short", "balanced", "long"))
    return (
        f"(has(self.limits) && has(self.limits.{field}) ? self.limits.{field} : "
        f"(self.profile == 'short' ? {short} : self.profile == 'long' ? {long_} : {bal}))"
    )


_IN = _cel_limit("maxInputTokens", "max_input_tokens")
_TOTAL = _cel_limit("maxTotalTokens", "max_total_tokens")


def tokens_message(max_input: int, max_total: int) -> str:
    return (
        f"spec.limits.maxInputTokens ({max_input}) must be less than spec.limits.maxTotalTokens "
        f"({max_total}), counting profile presets"
    )


TOKENS_CEL: Rule = {
    "rule": f"{_IN} < {_TOTAL}",
    # No messageExpression: the API server's cost estimate for string(int) concatenation is
    # unbounded and it refuses the CRD. The operator's own message carries the values.
    "message": (
        "spec.limits.maxInputTokens must be less than spec.limits.maxTotalTokens, counting profile "
        "presets (short 2048/4096, balanced 4096/8192, long 8192/12288)"
    ),
    "reason": "FieldValueInvalid",
    "fieldPath": ".limits",
}
HOT_MIN_CEL: Rule = {
    "rule": "!has(self.tier) || self.tier != 'hot' || !has(self.replicas) || self.replicas.min >= 1",
    "message": "spec.replicas.min must be at least 1 when spec.tier is hot (hot pools keep weights on GPUs)",
    "fieldPath": ".replicas.min",
}
CUSTOM_LIMITS_CEL: Rule = {
    "rule": (
        "self.profile != 'custom' || "
        "(has(self.limits) && has(self.limits.maxInputTokens) && has(self.limits.maxTotalTokens))"
    ),
    "message": "spec.profile custom needs spec.limits.maxInputTokens and spec.limits.maxTotalTokens",
    "fieldPath": ".limits",
}
REPLICAS_CEL: Rule = {
    "rule": "!has(self.max) || self.min <= self.max",
    "message": "spec.replicas.min must be at most spec.replicas.max",
}
QUANTIZE_DTYPE_CEL: Rule = {
    "rule": "!has(self.quantize) || !has(self.dtype) || self.quantize.startsWith('bitsandbytes')",
    "message": (
        "spec.engine.quantize and spec.engine.dtype are exclusive; TGI allows both only for the "
        "bitsandbytes variants"
    ),
}
IMAGE_CEL: Rule = {
    "rule": "!self.endsWith(':latest')",
    "message": (
        "spec.engine.image must pin a version: ':latest' is built from the engine's main branch, not a "
        "release"
    ),
}
# TGI's; api/engine.py turns it into one CEL rule per engine (each with that engine's typed flags).
EXTRA_ARGS_CEL: Rule = {
    "message": (
        "spec.engine.extraArgs may not set a flag that has a typed field ("
        + ", ".join("--" + f for f in TYPED_FLAGS)
        + ")"
    ),
}
ENV_TOKEN_CEL: Rule = {
    "rule": "self.all(e, !(e.name in " + str(list(TOKEN_ENV_NAMES)) + ") || !has(e.value))",
    "message": (
        "spec.engine.env may not hold a literal HuggingFace token (HF_TOKEN, HUGGING_FACE_HUB_TOKEN, "
        "HF_API_TOKEN); use spec.model.hfTokenSecretRef"
    ),
}
NAME_CEL: Rule = {
    "rule": (
        f"self.metadata.name.size() <= {MAX_POOL_NAME} && "
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    ),
    "message": (
        f"metadata.name must be a DNS-1035 label of at most {MAX_POOL_NAME} characters, so that child "
        "names (longest: NAME-fetch-<8 hex>) stay within 63"
    ),
}


def check_min_max(low: int, high: int | None) -> None:
    """`replicas.min <= replicas.max`, for pools and gateways alike."""
    if high is not None and low > high:
        raise ValueError(f"{REPLICAS_CEL['message']} (min {low} > max {high})")


# Environments: a prod pool runs only pinned weights and a pinned engine.
COMMIT_REGEX = "^[0-9a-f]{40}$"
# A release tag (3.3.6, v2.4.1-rocm; not a bare major like 3) or a commit build (sha-1234abc), or a digest.
PINNED_IMAGE_REGEX = (
    r"(@sha256:[a-f0-9]{64}|:(v?[0-9]+([.][0-9]+)+([-+_.][0-9A-Za-z][0-9A-Za-z._-]*)?|sha-[0-9a-f]{7,40}))$"
)
_STAGING = "(has(self.environment) && self.environment == 'staging')"
PROD_REVISION_CEL: Rule = {
    "rule": f"{_STAGING} || self.model.id.startsWith('/') || self.model.revision.matches('{COMMIT_REGEX}')",
    "message": (
        "spec.model.revision must be a commit (40 hex digits) when spec.environment is prod: a branch or "
        "tag can move under a running pool (set spec.environment: staging to run it)"
    ),
    "fieldPath": ".model.revision",
}
PROD_IMAGE_CEL: Rule = {
    "rule": (
        f"{_STAGING} || !has(self.engine) || !has(self.engine.image) || "
        f"self.engine.image.matches('{PINNED_IMAGE_REGEX}')"
    ),
    "message": (
        "spec.engine.image must pin a version when spec.environment is prod: a release tag (e.g. :3.3.6), "
        "sha-<commit> or @sha256:<digest>"
    ),
    "fieldPath": ".engine.image",
}


def check_environment(environment: str, model_id: str, revision: str, image: str) -> None:
    """The prod rules of PROD_REVISION_CEL and PROD_IMAGE_CEL, in Python (same messages)."""
    if environment == "staging":
        return
    if not model_id.startswith("/") and not re.match(COMMIT_REGEX, revision):
        raise ValueError(f"{PROD_REVISION_CEL['message']} (got {revision!r})")
    if not re.search(PINNED_IMAGE_REGEX, image):
        raise ValueError(f"{PROD_IMAGE_CEL['message']} (got {image!r})")


# Overload policies (spec.routing.overload): each names what it needs.
OVERLOAD_CAP_CEL: Rule = {
    "rule": "!has(self.policy) || self.policy != 'cap' || has(self.capMaxNewTokens)",
    "message": "spec.routing.overload.capMaxNewTokens is required when spec.routing.overload.policy is cap",
    "fieldPath": ".capMaxNewTokens",
}
OVERLOAD_SPARE_CEL: Rule = {
    "rule": "!has(self.policy) || self.policy != 'spare' || has(self.sparePool)",
    "message": "spec.routing.overload.sparePool is required when spec.routing.overload.policy is spare",
    "fieldPath": ".sparePool",
}

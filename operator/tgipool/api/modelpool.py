"""Pydantic models of the ModelPool custom resource: the single source of the CRD schema.

Every rule the API server can enforce lives twice on purpose: as CEL in `json_schema_extra`
(refused at `kubectl apply`) and as a Python check (refused by `tgipool render` and by the
operator when it runs against a cluster without the CRD's rules). The messages are identical,
and `tests/unit/test_validation.py` checks both sides name the same field and limit.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from tgipool.api import rules
from tgipool.api.budget import GpuBudget
from tgipool.api.checklist import ChecklistItem
from tgipool.api.engine import Engine, EngineKind
from tgipool.api.profiles import EffectiveLimits, default_slo_p95_ms, effective_limits
from tgipool.api.routing import SPEC_RULES, Environment, Routing
from tgipool.api.tiers import EffectiveActivation, effective_activation

# EngineKind lives in api/engine.py; re-exported here for the modules that import it from the pool API.
__all__ = [
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "EngineKind",
    "ModelPool",
    "ModelPoolSpec",
    "ModelPoolStatus",
]

GROUP = "tgipool.io"
VERSION = "v1alpha1"
KIND = "ModelPool"
PLURAL = "modelpools"

Profile = Literal["short", "balanced", "long", "custom"]
Tier = Literal["hot", "warm", "cold"]
AccessMode = Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod", "ReadOnlyMany"]

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Spec(BaseModel):
    """Base for every spec object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class SecretKeyRef(Spec):
    name: str = Field(min_length=1, max_length=253, description="Secret in the pool's namespace.")
    key: str = Field(default="token", min_length=1, description="Key inside the Secret.")


class Architecture(Spec):
    """Model shape for the capacity planner; optional."""

    num_layers: int | None = Field(default=None, ge=1, description="Transformer layers.")
    num_key_value_heads: int | None = Field(default=None, ge=1, description="KV heads (GQA).")
    head_dim: int | None = Field(default=None, ge=1, description="Dimension of one attention head.")
    parameters_b: float | None = Field(default=None, gt=0, description="Parameters, in billions.")


class ModelSource(Spec):
    id: str = Field(
        min_length=1,
        max_length=256,
        description="HuggingFace repo id (org/name) or a path inside the weight cache.",
    )
    revision: str = Field(
        default="main", min_length=1, max_length=128, description="Branch, tag or commit; pin a commit."
    )
    served_name: str | None = Field(
        default=None,
        max_length=128,
        description="Name clients ask for; several pools may serve one name. Defaults to the pool name.",
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret holding a HuggingFace token; never a literal token."
    )
    architecture: Architecture | None = Field(default=None, description="Shape, for the planner.")


class Limits(Spec):
    max_input_tokens: int | None = Field(
        default=None,
        ge=1,
        le=1_048_576,
        description="TGI --max-input-tokens; on vLLM and SGLang the gateway enforces it.",
    )
    max_total_tokens: int | None = Field(
        default=None,
        ge=2,
        le=1_048_576,
        description="TGI --max-total-tokens, vLLM --max-model-len, SGLang --context-length.",
    )
    max_batch_prefill_tokens: int | None = Field(
        default=None,
        ge=1,
        le=4_194_304,
        description="TGI --max-batch-prefill-tokens, vLLM --max-num-batched-tokens, SGLang "
        "--max-prefill-tokens and --chunked-prefill-size.",
    )
    max_concurrent_requests: int | None = Field(
        default=None,
        ge=1,
        le=65_536,
        description="TGI --max-concurrent-requests, vLLM --max-num-seqs, SGLang --max-running-requests.",
    )


class Gpu(Spec):
    resource: str = Field(default="nvidia.com/gpu", min_length=1, description="Extended resource name.")
    product: str | None = Field(
        default=None, max_length=63, description="Node label nvidia.com/gpu.product to select."
    )
    memory_gi_b: float | None = Field(default=None, gt=0, alias="memoryGiB", description="Memory per GPU.")
    hourly_price: float | None = Field(default=None, ge=0, description="Price of one GPU-hour.")


class Replicas(Spec):
    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [rules.REPLICAS_CEL]},
    )
    min: int = Field(default=1, ge=0, le=1000, description="Floor; the scale subresource sets it.")
    max: int | None = Field(default=None, ge=1, le=1000, description="Ceiling; defaults to min.")

    @model_validator(mode="after")
    def _check(self) -> Replicas:
        rules.check_min_max(self.min, self.max)
        return self

    @property
    def ceiling(self) -> int:
        return max(self.max if self.max is not None else self.min, self.min, 1)


class Autoscaling(Spec):
    queue_per_replica: int = Field(default=8, ge=1, le=100_000, description="Target TGI queue per replica.")
    p95_latency_ms: int | None = Field(
        default=None,
        ge=1,
        le=3_600_000,
        description="HPA target for the pool's p95 latency (ms); default: the objective "
        "(slo.p95LatencyMs, else the profile's).",
    )
    scale_on_latency: bool = Field(
        default=True, description="Also scale on p95 latency, not only on TGI's queue per replica."
    )
    scale_down_stabilization_seconds: int = Field(
        default=300, ge=0, le=3600, description="How long load must stay low before the HPA removes replicas."
    )
    gpu_budget: GpuBudget | None = Field(
        default=None, description="GPUs shared with pools of the same budget."
    )


class Cache(Spec):
    size: str = Field(default="100Gi", pattern=QUANTITY_PATTERN, description="Weight cache PVC size.")
    storage_class_name: str | None = Field(default=None, max_length=253)
    access_mode: AccessMode = Field(default="ReadWriteMany", description="RWX lets replicas share weights.")


class Slo(Spec):
    p95_latency_ms: int | None = Field(
        default=None,
        ge=1,
        le=3_600_000,
        description="p95 end-to-end latency objective (ms) for SLOMet; default by profile: short 3000, "
        "balanced 10000, long 30000.",
    )


class Activation(Spec):
    """How a warm or cold pool at rest wakes on demand and goes back to rest (ignored for hot)."""

    idle_after_seconds: int | None = Field(
        default=None,
        ge=10,
        le=604_800,
        description="Back to rest after this long without requests (default 900 for warm and cold).",
    )
    hold_seconds: int | None = Field(
        default=None,
        ge=1,
        le=3600,
        description="How long the gateway holds a request while the pool wakes, then 503 with Retry-After "
        "(default: warm 600, cold 1800).",
    )
    max_pending_requests: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="Requests held at once while the pool wakes; more get 503 (default 100).",
    )


class PodTemplate(Spec):
    """The parts of a pod a platform team usually sets; merged into the TGI pods."""

    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    topology_spread_constraints: list[dict[str, Any]] = Field(default_factory=list)
    priority_class_name: str | None = None
    service_account_name: str | None = None
    runtime_class_name: str | None = None
    image_pull_secrets: list[dict[str, Any]] = Field(default_factory=list)
    security_context: dict[str, Any] | None = None
    resources: dict[str, Any] | None = Field(
        default=None, description="cpu/memory for the TGI container; GPU count comes from numShard."
    )


class ModelPoolSpec(Spec):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                rules.TOKENS_CEL,
                rules.HOT_MIN_CEL,
                rules.CUSTOM_LIMITS_CEL,
                *SPEC_RULES,
            ]
        },
    )
    model: ModelSource
    environment: Environment = Field(default="prod", description="prod pins weights and image; staging: any.")
    engine: Engine = Field(default_factory=Engine)
    profile: Profile = Field(default="balanced", description="Presets for limits; explicit limits win.")
    limits: Limits = Field(default_factory=Limits)
    gpu: Gpu = Field(default_factory=Gpu)
    replicas: Replicas = Field(default_factory=Replicas)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    tier: Tier = Field(default="hot", description="hot: always loaded; warm: cached, 0 until demand; cold.")
    cache: Cache = Field(default_factory=Cache)
    routing: Routing = Field(default_factory=Routing)
    slo: Slo = Field(default_factory=Slo)
    activation: Activation = Field(default_factory=Activation)
    pod_template: PodTemplate = Field(default_factory=PodTemplate)

    @model_validator(mode="after")
    def _check(self) -> ModelPoolSpec:
        if self.profile == "custom" and (
            self.limits.max_input_tokens is None or self.limits.max_total_tokens is None
        ):
            raise ValueError(rules.CUSTOM_LIMITS_CEL["message"])
        eff = effective_limits(self.profile, self.limits)
        if eff.max_input_tokens >= eff.max_total_tokens:
            raise ValueError(rules.tokens_message(eff.max_input_tokens, eff.max_total_tokens))
        if self.tier == "hot" and self.replicas.min < 1:
            raise ValueError(rules.HOT_MIN_CEL["message"])
        rules.check_environment(self.environment, self.model.id, self.model.revision, self.engine.image)
        return self


def check_child_name(name: str, max_length: int, message: str) -> None:
    """Names become child names, labels and Service names: a DNS-1035 label that leaves room."""
    if len(name) > max_length or not re.match(DNS_LABEL_PATTERN, name) or not name[0].isalpha():
        raise ValueError(message)


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ModelPool(BaseModel):
    """A ModelPool as read from the API server or a file (status is ignored here)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    api_version: str = Field(default=f"{GROUP}/{VERSION}", alias="apiVersion")
    kind: Literal["ModelPool"] = "ModelPool"
    metadata: Metadata
    spec: ModelPoolSpec

    @model_validator(mode="after")
    def _check(self) -> ModelPool:
        check_child_name(self.metadata.name, rules.MAX_POOL_NAME, rules.NAME_CEL["message"])
        return self

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def served_name(self) -> str:
        return self.spec.model.served_name or self.metadata.name

    @property
    def limits(self) -> EffectiveLimits:
        return effective_limits(self.spec.profile, self.spec.limits)

    @property
    def activation(self) -> EffectiveActivation | None:
        """Wake and rest settings with the tier's defaults; None for hot pools."""
        return effective_activation(self.spec.tier, self.spec.activation)

    @property
    def slo_p95_ms(self) -> int:
        """The p95 objective: the spec's, else the profile's."""
        return self.spec.slo.p95_latency_ms or default_slo_p95_ms(self.spec.profile)


ConditionType = Literal[
    "Ready",
    "Progressing",
    "Degraded",
    "CapacityFeasible",
    "WeightsCached",
    "SLOMet",
    "ProductionReady",
    "InferencePool",
]


class Status(BaseModel):
    """Base for status objects: camelCase, and None fields left out when written."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(Status):
    type: str = Field(
        description="Ready, Progressing, Degraded, CapacityFeasible, WeightsCached, SLOMet, ProductionReady."
    )
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(description="CamelCase reason for the status.")
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str | None = Field(default=None, description="RFC 3339; changes only on flips.")


class CapacityStatus(Status):
    kv_bytes_per_token: int | None = None
    weights_bytes: int | None = None
    max_concurrent_sequences: int | None = None


class MetricsStatus(Status):
    """Live numbers from Prometheus over the metrics window (`tgipool run --metrics-window`)."""

    p50_latency_ms: float | None = Field(default=None, description="Median end-to-end request latency.")
    p95_latency_ms: float | None = None
    p99_latency_ms: float | None = None
    queue_depth: float | None = Field(default=None, description="Requests waiting in TGI's queues, all pods.")
    tokens_per_second: float | None = Field(
        default=None, description="Generated tokens per second, all pods."
    )
    requests_per_second: float | None = None
    error_rate: float | None = Field(default=None, description="Failed over all requests (0-1).")
    cost_per_million_tokens: float | None = Field(
        default=None, description="gpu.hourlyPrice x GPUs in use over live generated tokens, per 1M tokens."
    )
    observed_at: str | None = Field(default=None, description="When these values were read and last changed.")


class ActivationStatus(Status):
    """The last wake of a warm or cold pool, from the demand Lease, Job and Pod timestamps."""

    requested_at: str | None = Field(default=None, description="First demand of the wake (RFC 3339).")
    ready_at: str | None = Field(default=None, description="First replica Ready.")
    seconds: float | None = Field(default=None, description="requestedAt to readyAt.")
    scheduling_seconds: float | None = Field(default=None, description="Demand to a pod bound to a node.")
    weights_seconds: float | None = Field(default=None, description="The prefetch Job (cold pools).")
    loading_seconds: float | None = Field(default=None, description="Pod running to Ready (weights to GPU).")


class ModelPoolStatus(Status):
    observed_generation: int | None = None
    phase: str | None = Field(
        default=None,
        description="Pending, FetchingWeights, Progressing, Ready, Degraded, Standby, Waking, Cold, Invalid.",
    )
    replicas: int | None = Field(default=None, description="Pods of the pool's Deployment.")
    ready_replicas: int | None = None
    ready: str | None = Field(default=None, description="readyReplicas/replicas, for kubectl get.")
    selector: str | None = Field(default=None, description="Label selector of the pods (scale subresource).")
    endpoint: str | None = Field(default=None, description="In-cluster URL of the pool's Service.")
    served_name: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    capacity: CapacityStatus | None = None
    metrics: MetricsStatus | None = None
    last_activation: ActivationStatus | None = None
    checklist: list[ChecklistItem] | None = Field(default=None, description="The production checklist.")

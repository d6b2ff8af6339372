"""Pydantic models of the ModelGateway custom resource (the gateway in the cluster)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tgipool.api import rules
from tgipool.api.modelpool import Condition, Metadata, Spec, Status, check_child_name

GATEWAY_KIND = "ModelGateway"
GATEWAY_PLURAL = "modelgateways"
# Longest child name: NAME + "-gateway".
MAX_GATEWAY_NAME = 63 - len("-gateway")

GATEWAY_NAME_CEL: dict[str, Any] = {
    "rule": (
        f"self.metadata.name.size() <= {MAX_GATEWAY_NAME} && "
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
    ),
    "message": (
        f"metadata.name must be a DNS-1035 label of at most {MAX_GATEWAY_NAME} characters, so that "
        "NAME-gateway stays within 63"
    ),
}


class PoolSelector(Spec):
    match_labels: dict[str, str] = Field(
        default_factory=dict, description="ModelPools in this namespace with these labels; empty = all."
    )


class TenantsSecretRef(Spec):
    name: str = Field(min_length=1, max_length=253, description="Secret in the gateway's namespace.")
    key: str = Field(
        default="tenants.yaml",
        min_length=1,
        max_length=253,
        description="Key holding a YAML list of tenants: name, apiKey, pools, priority, rate limits.",
    )


class GatewayReplicas(Spec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [rules.REPLICAS_CEL]})
    min: int = Field(default=1, ge=1, le=100)
    max: int | None = Field(default=None, ge=1, le=100, description="Defaults to min.")

    @model_validator(mode="after")
    def _check(self) -> GatewayReplicas:
        rules.check_min_max(self.min, self.max)
        return self


class ModelGatewaySpec(Spec):
    pool_selector: PoolSelector = Field(default_factory=PoolSelector)
    default_pool: str | None = Field(
        default=None, max_length=63, description="Pool for requests that name no model."
    )
    tenants_secret_ref: TenantsSecretRef | None = Field(
        default=None, description="Tenants and their API keys; absent = no authentication."
    )
    queue_timeout_seconds: float = Field(default=5.0, ge=0, le=3600, description="Longest wait before 429.")
    max_queue_length: int = Field(default=1024, ge=0, le=1_000_000, description="Waiters per saturated pool.")
    connect_timeout_seconds: float = Field(
        default=2.0, gt=0, le=300, description="TCP connect to a pod; past it the request tries another pod."
    )
    response_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        le=86400,
        description="A pod's answer headers (and a non-streamed answer's body) must arrive within it, "
        "else 504. Long: generations take minutes.",
    )
    stream_idle_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Longest gap between bytes of a streamed answer (TGI sends a keep-alive every 15 s); "
        "past it the stream ends with an error event.",
    )
    client_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="A client's request headers, then its body, must arrive within it; idle keep-alive "
        "connections close after it.",
    )
    image: str = Field(
        default="ghcr.io/tgipool/tgipool:0.1.0",
        min_length=1,
        max_length=512,
        pattern=r"^[^\s]+(:[^\s:]+|@sha256:[a-f0-9]{64})$",
        description="The tgipool image (it also runs the gateway), pinned.",
    )
    port: int = Field(default=8080, ge=1024, le=65535)
    replicas: GatewayReplicas = Field(default_factory=GatewayReplicas)
    target_cpu_utilization: int = Field(default=70, ge=10, le=100, description="HPA CPU target, percent.")
    resources: dict[str, Any] | None = Field(default=None, description="Resources of the gateway container.")
    data_plane: Literal["core", "python"] = Field(
        default="core",
        description="core: the compiled tgipool-gateway-core serves the common request (parse, count, route, "
        "proxy) and Python the rest (a gateway with tenants runs Python alone: the core does not serve "
        "tenants); python: Python serves every request (about twice the CPU per request).",
    )


class ModelGateway(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    api_version: str = Field(default="tgipool.io/v1alpha1", alias="apiVersion")
    kind: Literal["ModelGateway"] = "ModelGateway"
    metadata: Metadata
    spec: ModelGatewaySpec

    @model_validator(mode="after")
    def _check(self) -> ModelGateway:
        check_child_name(self.metadata.name, MAX_GATEWAY_NAME, GATEWAY_NAME_CEL["message"])
        return self


class RoutePool(Status):
    name: str
    served_name: str
    max_input_tokens: int
    max_total_tokens: int
    priority: int = 0
    fallback_pool: str | None = None
    environment: str = "prod"
    ready_endpoints: int = 0


class ModelGatewayStatus(Status):
    observed_generation: int | None = None
    phase: str | None = None
    endpoint: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    pools: list[RoutePool] = Field(default_factory=list, description="The routing table the gateway serves.")
    routed_pools: int | None = Field(default=None, description="Pools in the routing table.")
    default_pool: str | None = None

"""PURE: pools as the gateway routes them, one route row each, from spec, effective limits and ready pods.

The operator (the routing table in a ModelGateway's status) and the gateway (its live configuration) both
call `routes()`, so the status shows exactly what the gateway serves. Endpoints are the pools' Ready Pods,
as the Gateway API inference extension's endpoint picker reads them, not Services or EndpointSlices (which
refuse the loopback pod addresses of the simulated cluster).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from tgipool.api.engine import EngineKind
from tgipool.api.modelgateway import ModelGateway, RoutePool
from tgipool.api.modelpool import ModelPool
from tgipool.api.routing import Environment, OverloadPolicy
from tgipool.desired import names
from tgipool.desired.demand import demand_lease_name
from tgipool.desired.tgi_args import adapter_ids
from tgipool.manifest import Manifest

Url = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=512)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
DEFAULT_PORT = 8080  # TGI's, when a pod names no `http` port


class Route(BaseModel):
    """One pool in the gateway's table: effective limits as given, and the URLs of its ready endpoints."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)
    name: Name
    served_name: Name | None = Field(default=None, description="Model name clients ask for; default: name.")
    engine: EngineKind = Field(default="tgi", description="The pool's inference server (spec.engine.kind).")
    max_input_tokens: int = Field(ge=1, le=1_048_576)
    max_total_tokens: int = Field(ge=2, le=1_048_576)
    max_concurrent_requests: int | None = Field(default=None, ge=1, le=65_536)
    priority: int = Field(default=0, ge=-1000, le=1000)
    fallback_pool: Name | None = None
    environment: Environment = Field(
        default="prod", description="staging: only for requests that ask for it."
    )
    overload: OverloadPolicy = Field(
        default="spill", description="What a saturated pool does (api/routing.py)."
    )
    cap_max_new_tokens: int | None = Field(default=None, ge=1, le=1_048_576)
    spare_pool: Name | None = None
    adapters: dict[Name, Name] = Field(
        default_factory=dict, description="LoRA adapters the pool loaded: name -> the id TGI knows it by."
    )
    tokenizer: str | None = Field(default=None, min_length=1)
    endpoints: list[Url] = Field(default_factory=list, max_length=4096)
    # Warm and cold pools: hold requests while the pool wakes, and ask for the wake on this Lease.
    hold_seconds: int | None = Field(default=None, ge=1, le=3600)
    max_pending_requests: int | None = Field(default=None, ge=1, le=100_000)
    demand_lease: Name | None = None

    @model_validator(mode="after")
    def _check(self) -> Route:
        if self.max_input_tokens >= self.max_total_tokens:
            raise ValueError(
                f"maxInputTokens ({self.max_input_tokens}) must be < maxTotalTokens ({self.max_total_tokens})"
            )
        if self.fallback_pool == self.name or (self.spare_pool is not None and self.spare_pool == self.name):
            raise ValueError("fallbackPool and sparePool must name another pool")
        if self.overload == "cap" and self.cap_max_new_tokens is None:
            raise ValueError("capMaxNewTokens is required when overload is cap")
        if self.overload == "spare" and self.spare_pool is None:
            raise ValueError("sparePool is required when overload is spare")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError("endpoints must be unique")
        return self

    @property
    def model(self) -> str:
        return self.served_name or self.name


def selects(gw: ModelGateway, pool: Manifest) -> bool:
    labels = pool.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in gw.spec.pool_selector.match_labels.items())


def ready_endpoints(pool: str, pods: Iterable[Manifest]) -> list[str]:
    """URLs of the pool's Ready, not terminating pods, on the TGI container's `http` port."""
    out = []
    for pod in pods:
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        if (meta.get("labels") or {}).get(names.POOL_LABEL) != pool or meta.get("deletionTimestamp"):
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        if not ready or not status.get("podIP"):
            continue
        port = DEFAULT_PORT
        for c in pod.get("spec", {}).get("containers", []):
            for p in c.get("ports") or []:
                if p.get("name") == "http":
                    port = int(p["containerPort"])
        out.append(f"http://{status['podIP']}:{port}")
    return sorted(out)


def route(pool: ModelPool, endpoints: list[str], routed: Mapping[str, Environment]) -> Route:
    """THE projection: a pool's route row. A fallback outside the table (`routed`: name -> environment), in
    another environment, or itself, is dropped."""
    limits = pool.limits
    env = pool.spec.environment
    fallback, overload = pool.spec.routing.fallback_pool, pool.spec.routing.overload
    if fallback is not None and routed.get(fallback) != env:
        fallback = None
    spare = overload.spare_pool if routed.get(overload.spare_pool or "") == env else None
    policy = overload.policy if overload.policy != "spare" or spare not in (None, pool.name) else "spill"
    activation = pool.activation
    return Route(
        name=pool.name,
        served_name=pool.served_name,
        engine=pool.spec.engine.kind,
        max_input_tokens=limits.max_input_tokens,
        max_total_tokens=limits.max_total_tokens,
        # TGI refuses (429) past --max-concurrent-requests, so the gateway holds the rest. vLLM and SGLang
        # render it as their batch size (--max-num-seqs, --max-running-requests) and queue beyond it
        # themselves: that queue is what their HPA scales on, so the gateway must not hold it back.
        max_concurrent_requests=limits.max_concurrent_requests if pool.spec.engine.kind == "tgi" else None,
        priority=pool.spec.routing.priority,
        fallback_pool=fallback if fallback != pool.name else None,
        environment=env,
        overload=policy,
        cap_max_new_tokens=overload.cap_max_new_tokens,
        spare_pool=spare if policy == "spare" else None,
        adapters=adapter_ids(pool),
        endpoints=endpoints,
        hold_seconds=activation.hold_seconds if activation else None,
        max_pending_requests=activation.max_pending_requests if activation else None,
        demand_lease=demand_lease_name(pool.name) if activation else None,
    )


def routes(gw: ModelGateway, pools: Iterable[Manifest], pods: Iterable[Manifest]) -> list[Route]:
    """The pools `gw` selects, by served name then size. Pools that do not parse are left out (the operator
    reports them on the pool itself)."""
    parsed: list[ModelPool] = []
    for raw in pools:
        if not selects(gw, raw):
            continue
        try:
            parsed.append(ModelPool.model_validate(raw))
        except ValidationError:
            continue
    pods = list(pods)
    routed = {p.name: p.spec.environment for p in parsed}
    rows = [route(p, ready_endpoints(p.name, pods), routed) for p in parsed]
    return sorted(rows, key=lambda r: (r.model, r.max_total_tokens, r.name))


def status_row(r: Route) -> RoutePool:
    """A route as the ModelGateway's status shows it: endpoints counted, not listed."""
    return RoutePool(
        name=r.name,
        served_name=r.model,
        max_input_tokens=r.max_input_tokens,
        max_total_tokens=r.max_total_tokens,
        priority=r.priority,
        fallback_pool=r.fallback_pool,
        environment=r.environment,
        ready_endpoints=len(r.endpoints),
    )

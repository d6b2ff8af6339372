"""How the gateway routes to a pool: its environment (`spec.environment`) and `spec.routing`.

A pool is `prod` (the default) or `staging`. The gateway sends a request to a staging pool only when it asks
for staging (`X-TGIPool-Environment: staging`, or a tenant bound to staging), never prod traffic to staging,
and no fallback crosses environments. A prod pool must pin its weights and engine (`rules.PROD_*_CEL`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from tgipool.api import rules

Environment = Literal["prod", "staging"]
ENVIRONMENTS: tuple[Environment, ...] = ("prod", "staging")
SPEC_RULES = [rules.PROD_REVISION_CEL, rules.PROD_IMAGE_CEL]
OverloadPolicy = Literal["spill", "cap", "spare", "reject"]


class _Spec(BaseModel):
    """As `modelpool.Spec`: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Overload(_Spec):
    """What the gateway does with a request when every endpoint of the pool is busy."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [rules.OVERLOAD_CAP_CEL, rules.OVERLOAD_SPARE_CEL]}
    )
    policy: OverloadPolicy = Field(
        default="spill",
        description="spill: to routing.fallbackPool (default: the model's next wider pool that fits; never a "
        "narrower one) when it has room, else wait in the queue (429 with "
        "Retry-After after queueTimeoutSeconds); cap: wait, generating at most capMaxNewTokens "
        "(X-TGIPool-Capped-Max-New-Tokens says so); spare: serve from sparePool (another model) when it has "
        "room; reject: 429 with Retry-After at once.",
    )
    cap_max_new_tokens: int | None = Field(
        default=None, ge=1, le=1_048_576, description="max_new_tokens while saturated (policy cap)."
    )
    spare_pool: str | None = Field(
        default=None, max_length=63, description="Pool of a spare model, same environment (policy spare)."
    )

    @model_validator(mode="after")
    def _check(self) -> Overload:
        if self.policy == "cap" and self.cap_max_new_tokens is None:
            raise ValueError(rules.OVERLOAD_CAP_CEL["message"])
        if self.policy == "spare" and self.spare_pool is None:
            raise ValueError(rules.OVERLOAD_SPARE_CEL["message"])
        return self


class Routing(_Spec):
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher wins ties between pools.")
    tenants: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list, max_length=256, description="Tenants allowed; empty = all."
    )
    fallback_pool: str | None = Field(
        default=None, max_length=63, description="Pool to spill to on overload (same environment only)."
    )
    overload: Overload = Field(default_factory=Overload, description="What a saturated pool does.")
    inference_pool: bool = Field(
        default=False,
        description="Also render a Gateway API inference extension InferencePool "
        "(inference.networking.k8s.io/v1) selecting the pool's pods, for an external inference gateway.",
    )

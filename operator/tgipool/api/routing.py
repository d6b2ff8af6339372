"""How the gateway routes to a pool: its environment (`spec.environment`) and `spec.routing`.

A pool is `prod` (the default) or `staging`. The gateway sends a request to a staging pool only when it asks
for staging (`X-TGIPool-Environment: staging`, or a tenant bound to staging), never prod traffic to staging,
and no fallback crosses environments. A prod pool must pin its weights and engine (`rules.PROD_*_CEL`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from tgipool.api import rules

Environment = Literal["prod", "staging"]
ENVIRONMENTS: tuple[Environment, ...] = ("prod", "staging")
SPEC_RULES = [rules.PROD_REVISION_CEL, rules.PROD_IMAGE_CEL]


class _Spec(BaseModel):
    """As `modelpool.Spec`: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Routing(_Spec):
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher wins ties between pools.")
    tenants: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list, max_length=256, description="Tenants allowed; empty = all."
    )
    fallback_pool: str | None = Field(
        default=None, max_length=63, description="Pool to spill to on overload (same environment only)."
    )

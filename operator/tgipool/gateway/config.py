"""Gateway configuration: a YAML file, or in the cluster a ModelGateway's routes (`cluster_source.py`).

```yaml
defaultPool: short-pool        # optional: serves requests without a model (or with "tgi" / an unknown one)
queueTimeoutSeconds: 5         # optional, default 5: longest wait in a saturated pool's queue before 429
maxQueueLength: 1024           # optional, default 1024 per pool: beyond it a saturated pool says 429 at once
connectTimeoutSeconds: 2       # optional, default 2: TCP connect to an endpoint (then: retry elsewhere)
responseTimeoutSeconds: 600    # optional, default 600: an endpoint's answer headers (and a non-streamed
                               #   answer's body) must arrive within it, else 504; generations take minutes
streamIdleTimeoutSeconds: 60   # optional, default 60: longest gap between bytes of a stream (TGI sends a
                               #   keep-alive comment every 15 s), else the stream ends with an error event
clientTimeoutSeconds: 60       # optional, default 60: a client's request headers, then its body, must
                               #   arrive within it (else the connection closes / 408); idle keep-alive
                               #   connections close after it; a client not reading a stream for it is gone
pools:
- name: short-pool
  servedName: llama3-8b-ru     # the name clients ask for; several pools may serve one name
  profile: short               # optional (short | balanced | long): preset limits from api/profiles.py
  maxInputTokens: 2048         # explicit limits win over the profile; one of the two is required
  maxTotalTokens: 4096
  maxConcurrentRequests: 128   # optional, per endpoint; else learned from each endpoint's /info
  priority: 10                 # optional, default 0: breaks ties between pools of equal maxTotalTokens
  fallbackPool: long-pool      # optional: where a saturated pool spills (same environment only)
  environment: prod            # optional, default prod; staging pools get only requests asking for staging
  overload: spill              # optional: spill (default) | cap | spare | reject, when every endpoint is busy
  capMaxNewTokens: 256         #   cap: generate at most this many tokens while saturated
  sparePool: small-pool        #   spare: serve from this pool (another model) when it has room
  adapters: {legal: org/legal-lora}   # optional: LoRA adapters the pool loaded, name -> id TGI knows
  tokenizer: path/to/tokenizer.json   # optional: exact counts; else the shared ~4 chars/token estimate
  endpoints: [http://127.0.0.1:9001]
tenants:                       # optional; absent or empty means no authentication
- {name: team-a, apiKey: key-a-0123456, pools: [short-pool], priority: 5,
   requestsPerMinute: 600, tokensPerMinute: 200000}
- {name: qa, apiKey: key-qa-0123456, environment: staging}   # bound to staging: every request goes there
```

Field names are camelCase; unknown fields are refused; errors name the field (`pools[0].maxTotalTokens`).
A pool is a `tgipool.routes.Route`: `profile` is the file's shorthand, resolved once on reading.
API keys must have at least 8 characters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from tgipool.api.profiles import PRESETS
from tgipool.api.routing import Environment
from tgipool.routes import Name, Route


class ConfigError(ValueError):
    """A configuration problem; the message names the file and field."""


class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class TenantConfig(_Spec):
    name: Name
    api_key: str = Field(min_length=8, max_length=512, repr=False)
    pools: list[Name] = Field(default_factory=list, description="Pools this tenant may reach; empty = all.")
    priority: int = Field(default=0, ge=-1000, le=1000)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    environment: Environment | None = Field(
        default=None, description="Bound to this environment (staging: all its traffic goes to staging)."
    )


class GatewayConfig(_Spec):
    default_pool: Name | None = None
    queue_timeout_seconds: float = Field(default=5.0, ge=0, le=3600)
    max_queue_length: int = Field(default=1024, ge=0, le=1_000_000)
    connect_timeout_seconds: float = Field(default=2.0, gt=0, le=300)
    response_timeout_seconds: float = Field(default=600.0, gt=0, le=86400)
    stream_idle_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    client_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    pools: list[Route] = Field(default_factory=list)
    tenants: list[TenantConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> GatewayConfig:
        names = [p.name for p in self.pools]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"pools: duplicate name(s) {sorted(dup)}")
        known = set(names)
        if self.default_pool is not None and self.default_pool not in known:
            raise ValueError(f"defaultPool: no pool named {self.default_pool!r}")
        for i, pool in enumerate(self.pools):
            if pool.fallback_pool is not None and pool.fallback_pool not in known:
                raise ValueError(f"pools[{i}].fallbackPool: no pool named {pool.fallback_pool!r}")
            if pool.spare_pool is not None and pool.spare_pool not in known:
                raise ValueError(f"pools[{i}].sparePool: no pool named {pool.spare_pool!r}")
        tenant_names = [t.name for t in self.tenants]
        if len(set(tenant_names)) != len(tenant_names):
            raise ValueError("tenants: duplicate tenant names")
        if len({t.api_key for t in self.tenants}) != len(self.tenants):
            raise ValueError("tenants: two tenants share an apiKey")  # never print the key itself
        for i, tenant in enumerate(self.tenants):
            for pool_name in tenant.pools:
                if pool_name not in known:
                    raise ValueError(f"tenants[{i}].pools: no pool named {pool_name!r}")
        return self


def describe(err: ValidationError) -> str:
    """One line per problem, naming the field in the YAML's own spelling (`pools[0].maxTotalTokens`)."""
    lines = []
    for e in err.errors(include_input=False, include_url=False):
        path = ""
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{path or '(top level)'}: {msg}")
    return "; ".join(lines)


def _with_limits(where: str, pool: dict[str, Any]) -> dict[str, Any]:
    """A file pool's `profile` stands for its preset limits (api/profiles.py); explicit limits win."""
    out = {k: v for k, v in pool.items() if k != "profile"}
    profile = pool.get("profile")
    if profile is None:
        if out.get("maxInputTokens") is None or out.get("maxTotalTokens") is None:
            raise ConfigError(
                f"{where}: maxInputTokens and maxTotalTokens are required when no profile is given"
            )
        return out
    preset = PRESETS.get(profile) if isinstance(profile, str) else None
    if preset is None:
        raise ConfigError(f"{where}.profile: must be one of {', '.join(PRESETS)}, not {profile!r}")
    if out.get("maxInputTokens") is None:
        out["maxInputTokens"] = preset.max_input_tokens
    if out.get("maxTotalTokens") is None:
        out["maxTotalTokens"] = preset.max_total_tokens
    return out


def parse_config(data: Any, source: str = "config") -> GatewayConfig:
    """A GatewayConfig from the file's mapping (pools may be given as Routes already, with no profile)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    pools = data.get("pools")
    if isinstance(pools, list):
        data = {
            **data,
            "pools": [
                _with_limits(f"{source}: pools[{i}]", p) if isinstance(p, dict) else p
                for i, p in enumerate(pools)
            ],
        }
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe(err)}") from None


def load_config(path: str | Path) -> GatewayConfig:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    return parse_config(data, str(path))

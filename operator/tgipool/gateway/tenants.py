"""Tenants: API keys, allowed pools, a default priority, and request / token rate limits (token buckets).

Keys are compared with `hmac.compare_digest` against every tenant's key (no early exit, no dict lookup by
key), and are never logged, exported as metrics or echoed in errors: only the tenant's name is.

Limits: `requestsPerMinute` is a bucket of that many requests refilled continuously (rpm / 60 per second);
`tokensPerMinute` likewise for tokens, charged with all the request may use: its input tokens plus every
token the backend may generate for it (`parsing.py`), validated before the charge. A charge is never
negative and is never given back; a refused request takes nothing. A request costing more than a whole
bucket can never be served: it is refused for good (`Refusal.never`), not told to retry.
"""

from __future__ import annotations

import hmac
import math
import time
from dataclasses import dataclass, field

from tgipool.gateway.config import TenantConfig


class TokenBucket:
    __slots__ = ("capacity", "level", "per_minute", "rate", "stamp")

    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self.capacity = max(per_minute, 1.0)  # below one, not even a single request would ever pass
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until `cost` is available (0 when it is now, inf when never); takes nothing."""
        self._refill(now)
        if cost > self.capacity:
            return math.inf
        return 0.0 if self.level >= cost else (cost - self.level) / self.rate

    def take(self, cost: float) -> None:
        if cost < 0:
            raise ValueError("a charge is never negative")
        self.level -= cost


@dataclass(frozen=True)
class Refusal:
    """Which limit refuses a request: `wait` seconds until it would pass, or `never` (over a whole bucket)."""

    limit: str
    wait: int
    never: bool = False
    capacity: float = 0.0


@dataclass
class Tenant:
    name: str
    pools: frozenset[str] | None  # None: every pool
    priority: int
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None
    key: bytes = field(default=b"", repr=False)
    environment: str | None = None  # bound to an environment; None: the request's header decides

    def check(self, tokens: int) -> Refusal | None:
        """Take one request and `tokens` tokens, or say which limit refuses (nothing is taken then)."""
        if tokens < 0:
            raise ValueError("a charge is never negative")
        now = time.monotonic()
        waits: list[tuple[str, float, TokenBucket]] = []
        if self.requests is not None and (w := self.requests.wait_for(1, now)) > 0:
            waits.append(("requestsPerMinute", w, self.requests))
        if self.tokens is not None and (w := self.tokens.wait_for(tokens, now)) > 0:
            waits.append(("tokensPerMinute", w, self.tokens))
        if waits:
            limit, wait, bucket = max(waits, key=lambda x: x[1])
            if math.isinf(wait):
                return Refusal(limit, 0, never=True, capacity=bucket.capacity)
            return Refusal(limit, max(1, math.ceil(wait)))
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)
        return None


class Tenants:
    """The tenant registry; empty means authentication is off."""

    def __init__(self, configs: list[TenantConfig] | None = None) -> None:
        self.tenants: list[Tenant] = []
        self.update(configs or [])

    @property
    def enabled(self) -> bool:
        return bool(self.tenants)

    def update(self, configs: list[TenantConfig]) -> None:
        """Replace the tenants; a tenant keeping its name keeps its buckets when its limits are unchanged."""
        old = {t.name: t for t in self.tenants}
        fresh = []
        for c in configs:
            prev = old.get(c.name)
            tenant = Tenant(
                name=c.name,
                pools=frozenset(c.pools) if c.pools else None,
                priority=c.priority,
                key=c.api_key.encode("utf-8"),
                environment=c.environment,
            )
            if c.requests_per_minute is not None:
                same = prev and prev.requests and prev.requests.per_minute == c.requests_per_minute
                tenant.requests = prev.requests if same and prev else TokenBucket(c.requests_per_minute)
            if c.tokens_per_minute is not None:
                same = prev and prev.tokens and prev.tokens.per_minute == c.tokens_per_minute
                tenant.tokens = prev.tokens if same and prev else TokenBucket(c.tokens_per_minute)
            fresh.append(tenant)
        self.tenants = fresh

    def authenticate(self, authorization: str | None) -> Tenant | None:
        """The tenant whose key is the bearer token, comparing against every key in constant time.

        Header bytes that are not UTF-8 (aiohttp keeps them as surrogate escapes) are compared as sent:
        they match no key, and never raise."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        given = authorization[7:].strip().encode("utf-8", "surrogateescape")
        found: Tenant | None = None
        for tenant in self.tenants:
            if hmac.compare_digest(given, tenant.key) and found is None:
                found = tenant
        return found

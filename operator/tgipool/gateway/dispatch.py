"""Dispatch and queueing: which pool serves a request, and an endpoint of it (or its fallback) when free.

The request's model picks the candidate pools, the tenant narrows them, the routing rule of `routing.py`
picks one by length, the tenant's rate limits apply; then `acquire` takes the endpoint with the least work
in flight, spills to the fallback pool when it has room and fits, or waits in the pool's priority queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from tgipool.gateway.errors import Rejection, overloaded
from tgipool.gateway.parsing import ParsedRequest, measure, priority
from tgipool.gateway.routing import Endpoint, Pool, PoolRemovedError
from tgipool.gateway.state import Gateway
from tgipool.gateway.tenants import Tenant


@dataclass(slots=True)
class Dispatch:
    pool: Pool
    fallback: Pool | None
    tokens: int  # input tokens of all prompts, with the pool's tokenizer
    priority: int


async def dispatch(
    gw: Gateway, parsed: ParsedRequest, tenant: Tenant | None, headers: Mapping[str, str]
) -> Dispatch:
    """The pool for a request; raises Rejection (404, 403, 422 or 429) when there is none."""
    pools = gw.table.candidates(parsed.model)
    if pools is None:
        raise Rejection(404, f"Model {parsed.model!r} is not served here", "model_not_found", "unknown_model")
    if tenant is not None and tenant.pools is not None:
        pools = [p for p in pools if p.name in tenant.pools]
        if not pools:
            raise Rejection(
                403, f"Tenant {tenant.name} may not use model {parsed.model!r}", "forbidden", "forbidden"
            )
    counts: dict[str, tuple[int, int]] = {}
    for p in pools:
        if p.counter.key not in counts:
            counts[p.counter.key] = await measure(p, parsed.texts)
    choice = gw.table.choose(pools, {k: v[0] for k, v in counts.items()}, parsed.max_new)
    if choice.pool is None:
        assert choice.error is not None
        raise Rejection(422, "Input validation error: " + choice.error, "validation", "too_long")
    pool = choice.pool
    n_total = counts[pool.counter.key][1]
    cost = n_total + (parsed.max_new or 0) * len(parsed.texts)
    if tenant is not None:
        refused = tenant.check(cost)
        if refused is not None:
            limit, wait = refused
            raise Rejection(
                429,
                f"Rate limit exceeded: tenant {tenant.name} is over its {limit}",
                "rate_limited",
                "rate_limited",
                {"Retry-After": str(wait)},
            )
    fallback = await _fallback(gw, pool, tenant, parsed)
    return Dispatch(pool, fallback, n_total, priority(headers, tenant))


async def _fallback(gw: Gateway, pool: Pool, tenant: Tenant | None, parsed: ParsedRequest) -> Pool | None:
    """The pool's fallback, if the tenant may use it and it would accept the request."""
    if pool.fallback is None:
        return None
    fb = gw.table.pools.get(pool.fallback)
    if fb is None or (tenant is not None and tenant.pools is not None and fb.name not in tenant.pools):
        return None
    n, _ = await measure(fb, parsed.texts)
    return fb if fb.accepts(n, parsed.max_new) else None


async def acquire(
    gw: Gateway,
    pool: Pool,
    tokens: int,
    priority: int,
    fallback: Pool | None,
    exclude: list[Endpoint],
    timeout: float,
) -> tuple[Pool, Endpoint, float]:
    """(pool, endpoint, seconds queued): room, else the fallback, else the queue; else Rejection."""
    ep = pool.try_acquire(tokens, exclude)
    if ep is not None:
        return pool, ep, 0.0
    if fallback is not None:
        ep = fallback.try_acquire(tokens, exclude)
        if ep is not None:
            gw.metrics.fallbacks.labels(pool.name, fallback.name).inc()
            return fallback, ep, 0.0
    if exclude:  # a retry with no other endpoint free: the same one again, unless it is down
        ep = pool.try_acquire(tokens)
        if ep is not None:
            return pool, ep, 0.0
    if len(pool.waiters) >= gw.config.max_queue_length or timeout <= 0:
        raise overloaded(gw.config.queue_timeout_seconds, "queue_full")
    waiter = pool.enqueue(priority, tokens)
    started = time.perf_counter()
    try:
        ep = await asyncio.wait_for(waiter.future, timeout)
    except TimeoutError:
        pool.cancel(waiter)
        raise overloaded(gw.config.queue_timeout_seconds, "overloaded") from None
    except PoolRemovedError:
        raise Rejection(503, f"Pool {pool.name} was removed", "unavailable", "pool_removed") from None
    except asyncio.CancelledError:
        pool.cancel(waiter)
        raise
    waited = time.perf_counter() - started
    gw.metrics.queue_wait.labels(pool.name).observe(waited)
    return pool, ep, waited

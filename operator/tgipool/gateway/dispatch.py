"""Dispatch and queueing: which pool serves a request, and an endpoint of it (or its fallback) when free.

The request's model picks the candidate pools, the tenant narrows them, the routing rule of `routing.py`
picks one by length, the tenant's rate limits apply; then `acquire` takes the endpoint with the least work
in flight, spills to the fallback pool (by default the next wider pool of the model) when it has room and
fits, or waits in the pool's priority queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from tgipool.gateway.errors import Rejection, overloaded
from tgipool.gateway.parsing import ParsedRequest, environment, measure, priority
from tgipool.gateway.routing import Endpoint, Pool, PoolRemovedError
from tgipool.gateway.state import Gateway
from tgipool.gateway.tenants import Tenant


@dataclass(slots=True)
class Dispatch:
    pool: Pool
    fallback: Pool | None
    tokens: int  # input tokens of all prompts, with the pool's tokenizer
    priority: int
    adapter_id: str | None = None  # the LoRA adapter the request names, as the pool's TGI knows it


async def dispatch(
    gw: Gateway, parsed: ParsedRequest, tenant: Tenant | None, headers: Mapping[str, str]
) -> Dispatch:
    """The pool for a request; raises Rejection (400, 404, 403, 413, 422 or 429) when there is none."""
    env = environment(headers, tenant)
    pools = gw.table.candidates(parsed.model, env)
    adapter: str | None = None
    if pools is None and parsed.model is not None and parsed.model != "tgi":
        found = gw.table.adapter_candidates(parsed.model, env)
        if found is not None:
            pools, adapter = found
    if pools is None:
        where = "" if env == "prod" else f" in {env}"
        if parsed.model is None or parsed.model == "tgi":
            message = f"No model given and no default pool{where}: name a model"
        else:
            message = f"The model {parsed.model[:200]!r} does not exist{where}"
        raise Rejection(404, message, "model_not_found", "unknown_model", param="model")
    if tenant is not None and tenant.pools is not None:
        pools = [p for p in pools if p.name in tenant.pools]
        if not pools:
            raise Rejection(
                403, f"Tenant {tenant.name} may not use model {parsed.model!r}", "forbidden", "forbidden"
            )
    if parsed.tgi_route:
        pools = tgi_pools(pools, parsed.route)
    counts: dict[str, list[int]] = {}
    for p in pools:
        if p.counter.key not in counts:
            counts[p.counter.key] = await measure(p, parsed.texts)
    choice = gw.table.choose(pools, {k: max(v) for k, v in counts.items()}, parsed.max_new)
    if choice.pool is None:
        assert choice.error is not None
        raise Rejection(422, "Input validation error: " + choice.error, "validation", "too_long")
    pool = choice.pool
    n = counts[pool.counter.key]
    adapter_id = pool.adapters[adapter] if adapter is not None else None
    fallback = await _fallback(gw, pool, tenant, parsed, adapter)
    if fallback is None and pool.overload == "spill" and pool.fallback is None:
        fallback = _wider(pools, pool, {k: max(v) for k, v in counts.items()}, parsed.max_new, adapter)
    if tenant is not None:  # the most the request may use, on its pool or on the fallback
        cost = parsed.cost(pool, n)
        if fallback is not None:
            cost = max(cost, parsed.cost(fallback, await measure(fallback, parsed.texts)))
        _charge(tenant, cost)
    return Dispatch(pool, fallback, sum(n), priority(headers, tenant), adapter_id)


def tgi_pools(pools: list[Pool], route: str) -> list[Pool]:
    """TGI's own routes go to TGI pools only; a model served only by other engines: 400, naming them."""
    tgi = [p for p in pools if p.tgi_api]
    if tgi:
        return tgi
    served = ", ".join(f"pool {p.name} ({p.engine})" for p in sorted(pools, key=lambda p: p.name))
    raise Rejection(
        400,
        f"Model {pools[0].model!r} is served by {served}: {route} is TGI's own route, which only "
        "TGI pools serve; use /v1/chat/completions or /v1/completions",
        "unsupported_route",
        "engine_route",
    )


def _charge(tenant: Tenant, cost: int) -> None:
    """Take the request's cost from the tenant's buckets, or refuse it (taking nothing)."""
    refused = tenant.check(cost)
    if refused is None:
        return
    if refused.never:
        raise Rejection(
            413,
            f"Request too large for tenant {tenant.name}: it may use {cost} tokens (its input and all it may "
            f"generate), more than its whole {refused.limit} of {refused.capacity:g}; it can never be "
            "served: lower max_new_tokens / max_tokens (or set one) or shorten the prompt",
            "request_too_large",
            "too_large_for_quota",
        )
    raise Rejection(
        429,
        f"Rate limit exceeded: tenant {tenant.name} is over its {refused.limit}",
        "rate_limited",
        "rate_limited",
        {"Retry-After": str(refused.wait)},
    )


def _wider(
    pools: list[Pool], pool: Pool, counts: dict[str, int], max_new: int | None, adapter: str | None
) -> Pool | None:
    """Spill without a fallbackPool: the next wider pool of the same model (a long pool for a short request)
    that fits the request; a pool never spills to a narrower one, so long requests keep the long pool."""
    wider = [
        p
        for p in pools
        if p.total_limit > pool.total_limit
        and p.environment == pool.environment
        and p.upstream_model == pool.upstream_model  # the body names the model for the pool's engine
        and p.fits(counts[p.counter.key], max_new)
        and (adapter is None or p.adapters.get(adapter) == pool.adapters[adapter])
    ]
    return min(wider, key=lambda p: (p.total_limit, -p.priority, p.name), default=None)


async def _fallback(
    gw: Gateway, pool: Pool, tenant: Tenant | None, parsed: ParsedRequest, adapter: str | None = None
) -> Pool | None:
    """Where the overload policy sends a request when the pool is saturated: the fallback pool (spill) or the
    spare model's pool (spare), if the tenant may use it, it is in the pool's environment and it would
    accept the request."""
    target = pool.spare if pool.overload == "spare" else pool.fallback if pool.overload == "spill" else None
    if target is None:
        return None
    fb = gw.table.pools.get(target)
    if fb is None or fb.environment != pool.environment:
        return None
    if fb.upstream_model != pool.upstream_model:
        return None  # the body names the model as the pool's engine knows it: another engine may not
    if adapter is not None and fb.adapters.get(adapter) != pool.adapters[adapter]:
        return None  # the fallback did not load the adapter under the same id
    if tenant is not None and tenant.pools is not None and fb.name not in tenant.pools:
        return None
    n = max(await measure(fb, parsed.texts))
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
    if pool.overload == "reject":  # the pool's policy: no wait, 429 with Retry-After at once
        raise overloaded(gw.config.queue_timeout_seconds, "rejected")
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

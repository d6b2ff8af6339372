"""The routing table: pools, their endpoints and the wait queues, replaceable while traffic runs.

`RoutingTable.update(routes)` swaps in a new set of pools. Endpoints are kept in a registry keyed by URL, and
pools by name, so an update keeps in-flight counters, learned concurrency limits and queued waiters of
everything that stays; an endpoint that disappears stops receiving new requests while its in-flight requests
finish normally; waiters of a removed pool are refused at once (503). In the cluster, `cluster_source.py`
calls `update()` whenever the selected pools or their ready pods change.

Pool choice (DESIGN.md section 2, generalised for TGI's defaults), for `n` input tokens counted with each
pool's tokenizer and the request's `max_new_tokens` (`m`):

1. A pool *fits* when `n <= maxInputTokens` and `n + m <= maxTotalTokens`. When `m` is absent TGI defaults it
   per pool to `maxTotalTokens - n`, so the request fits iff `n <= maxInputTokens` (which implies
   `n < maxTotalTokens`, as `maxInputTokens < maxTotalTokens`). Among fitting pools take the smallest
   `maxTotalTokens` (short before long), ties by `priority` (higher first), then by name.
2. No pool fits fully, but TGI would still accept the request somewhere: TGI only checks
   `n + min(m, 1024) <= maxTotalTokens` and generates in 1024-token chunks until the context is full
   (ending with `length`). Then take the pool with the most room (largest `maxTotalTokens`), so the client
   gets as much of its generation as any pool can give, exactly as if it had called that TGI directly.
3. Otherwise 422 with TGI's message naming the largest limit, before any backend sees the request.

Engines (`Route.engine`): every engine serves the OpenAI routes; only TGI serves its own API
(`/generate`, `/generate_stream`, `/`, `/info`), and only TGI accepts a request that does not fit whole
(rule 2: vLLM and SGLang refuse `n + m` over the context).

Endpoint choice: the least work in flight (requests, then estimated tokens) among endpoints that are not
removed, not cooling down after a connect failure or a 429, and below their concurrency limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tgipool.gateway.tokens import TokenCounter, counter_for
from tgipool.routes import Route

log = logging.getLogger("tgipool.gateway")
DEFAULT_CONCURRENCY = 128  # TGI's --max-concurrent-requests default, until /info says otherwise
TGI_GENERATION_CHUNK = 1024  # DEFAULT_GENERATION_LENGTH: TGI validates min(max_new_tokens, 1024)
# Engines that serve TGI's own API (and its /info, where the gateway learns an endpoint's limit).
TGI_API_ENGINES = frozenset({"tgi"})
DOWN_SECONDS = 1.0  # an endpoint refusing connections is skipped this long, then tried again
BUSY_SECONDS = 0.25  # an endpoint that answered 429 is skipped this long (or until one of ours finishes)


class PoolRemovedError(Exception):
    """The pool a request waited for was removed from the table."""


def endpoint_id(url: str) -> str:
    """An endpoint's name in answers (`X-TGIPool-Endpoint`): stable, and not its address."""
    return "ep-" + hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:12]


class Endpoint:
    """One TGI server, shared by every pool listing its URL; its counters survive table updates."""

    __slots__ = (
        "busy_until",
        "configured_limit",
        "down_until",
        "id",
        "in_flight",
        "in_flight_tokens",
        "info_requested",
        "learned_limit",
        "pools",
        "removed",
        "url",
    )

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.id = endpoint_id(url)
        self.in_flight = 0
        self.in_flight_tokens = 0
        self.configured_limit: int | None = None
        self.learned_limit: int | None = None
        self.info_requested = False
        self.down_until = 0.0
        self.busy_until = 0.0
        self.removed = False
        self.pools: list[Pool] = []

    @property
    def limit(self) -> int:
        return self.configured_limit or self.learned_limit or DEFAULT_CONCURRENCY

    def available(self, now: float) -> bool:
        return (
            not self.removed
            and self.in_flight < self.limit
            and now >= self.down_until
            and now >= self.busy_until
        )

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r}, in_flight={self.in_flight}, limit={self.limit})"


@dataclass(order=True)
class Waiter:
    sort_key: tuple[int, int]
    tokens: int = field(compare=False)
    future: asyncio.Future[Endpoint] = field(compare=False)


class Pool:
    """A pool's routing state: limits from its route, its endpoints, and its priority wait queue."""

    def __init__(self, route: Route, table: RoutingTable) -> None:
        self.table = table
        self.waiters: list[Waiter] = []
        self.endpoints: list[Endpoint] = []
        self.removed = False
        self._rotation = 0
        self.configure(route)

    def configure(self, route: Route) -> None:
        self.route = route
        self.name = route.name
        self.model = route.model
        self.input_limit = route.max_input_tokens
        self.total_limit = route.max_total_tokens
        self.priority = route.priority
        self.fallback = route.fallback_pool
        self.environment = route.environment
        self.overload = route.overload
        self.cap = route.cap_max_new_tokens
        self.spare = route.spare_pool
        self.adapters = route.adapters
        self.counter: TokenCounter = counter_for(route.tokenizer)
        self.engine = route.engine
        self.tgi_api = route.engine in TGI_API_ENGINES
        # The OpenAI `model` the pool's servers answer to: TGI's "tgi" (any other name is an adapter id
        # to it), else the served name (vLLM and SGLang run with `--served-model-name`).
        self.upstream_model = "tgi" if self.tgi_api else route.model

    # --- fitting ---
    def fits(self, n: int, max_new: int | None) -> bool:
        if n > self.input_limit:
            return False
        return max_new is None or n + max_new <= self.total_limit

    def accepts(self, n: int, max_new: int | None) -> bool:
        """What the server itself accepts (TGI validates at most 1024 new tokens at a time; the other
        engines the whole request)."""
        if n > self.input_limit:
            return False
        if max_new is None:
            return True
        new = min(max_new, TGI_GENERATION_CHUNK) if self.tgi_api else max_new
        return n + new <= self.total_limit

    # --- endpoints ---
    def pick(self, now: float, exclude: Iterable[Endpoint] = ()) -> Endpoint | None:
        """Least work in flight among available endpoints; None when saturated.

        The scan starts one endpoint further each time, so ties (an idle pool) go round-robin
        instead of always to the first endpoint.
        """
        best: Endpoint | None = None
        n = len(self.endpoints)
        start = self._rotation % n if n else 0
        self._rotation += 1
        for i in range(n):
            ep = self.endpoints[(start + i) % n]
            if not ep.available(now) or ep in exclude:
                continue
            if best is None or (ep.in_flight, ep.in_flight_tokens) < (best.in_flight, best.in_flight_tokens):
                best = ep
        return best

    def has_room(self, now: float) -> bool:
        return not self.waiters and self.pick(now) is not None

    def try_acquire(self, tokens: int, exclude: Iterable[Endpoint] = ()) -> Endpoint | None:
        """An endpoint for a new request, unless someone is already waiting (FIFO within priority)."""
        if self.waiters:
            return None
        ep = self.pick(time.monotonic(), exclude)
        if ep is not None:
            self.table.acquire(ep, tokens)
        return ep

    # --- the wait queue ---
    def enqueue(self, priority: int, tokens: int) -> Waiter:
        """Higher priority first, FIFO within a priority."""
        fut: asyncio.Future[Endpoint] = asyncio.get_running_loop().create_future()
        waiter = Waiter((-priority, next(self.table.sequence)), tokens, fut)
        heapq.heappush(self.waiters, waiter)
        self.table.on_queue_change(self)
        return waiter

    def cancel(self, waiter: Waiter) -> None:
        """Forget a waiter that timed out or went away; an endpoint already handed to it goes back."""
        if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
            self.table.release(waiter.future.result(), waiter.tokens)
            return
        waiter.future.cancel()
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return
        heapq.heapify(self.waiters)
        self.table.on_queue_change(self)

    def dispatch(self) -> None:
        """Hand free endpoints to the best waiters (called whenever capacity may have appeared)."""
        if not self.waiters:
            return
        now = time.monotonic()
        changed = False
        while self.waiters:
            if self.waiters[0].future.done():  # cancelled by its task; drop it
                heapq.heappop(self.waiters)
                changed = True
                continue
            ep = self.pick(now)
            if ep is None:
                break
            waiter = heapq.heappop(self.waiters)
            self.table.acquire(ep, waiter.tokens)
            waiter.future.set_result(ep)
            changed = True
        if changed:
            self.table.on_queue_change(self)

    def close(self) -> None:
        self.removed = True
        for waiter in self.waiters:
            if not waiter.future.done():
                waiter.future.set_exception(PoolRemovedError(self.name))
        self.waiters.clear()
        self.table.on_queue_change(self)


@dataclass
class Choice:
    pool: Pool | None
    error: str | None = None  # TGI's validation message (without the "Input validation error: " prefix)


class RoutingTable:
    def __init__(self) -> None:
        self.pools: dict[str, Pool] = {}
        self.by_model: dict[str, list[Pool]] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.default_pool: str | None = None
        self.sequence = itertools.count()
        # Hooks set by the server: learn an endpoint's limit from /info; queue depth metrics; any change of
        # pools, endpoints or limits (the compiled core's snapshot version, `core_link.py`).
        self.learn_limit: Callable[[Endpoint], None] | None = None
        self.queue_listener: Callable[[Pool], None] | None = None
        self.change_listener: Callable[[], None] | None = None

    # --- live updates ---
    def update(self, routes: Iterable[Route], default_pool: str | None = None) -> None:
        """Replace the table's pools and endpoints, keeping the state of those that remain."""
        new_pools: dict[str, Pool] = {}
        for route in routes:
            pool = self.pools.get(route.name)
            if pool is None:
                pool = Pool(route, self)
            else:
                pool.configure(route)
            new_pools[route.name] = pool
        new_endpoints: dict[str, Endpoint] = {}
        for pool in new_pools.values():
            for ep in pool.endpoints:
                ep.pools = []
        for pool in new_pools.values():
            eps = []
            for url in pool.route.endpoints:
                key = url.rstrip("/")
                known = new_endpoints.get(key) or self.endpoints.get(key)
                if known is None:
                    known = Endpoint(key)
                    log.info("endpoint %s is %s", known.id, key)  # X-TGIPool-Endpoint names it by id
                ep = known
                ep.removed = False
                ep.configured_limit = pool.route.max_concurrent_requests
                ep.pools.append(pool)
                new_endpoints[key] = ep
                eps.append(ep)
            pool.endpoints = eps
        for key, ep in self.endpoints.items():
            if key not in new_endpoints:
                ep.removed = True
                ep.pools = []
        for name, pool in self.pools.items():
            if name not in new_pools:
                pool.close()
        self.pools = new_pools
        self.endpoints = new_endpoints
        by_model: dict[str, list[Pool]] = {}
        for pool in new_pools.values():
            by_model.setdefault(pool.model, []).append(pool)
        self.by_model = by_model
        self.default_pool = default_pool if default_pool in new_pools else None
        if self.change_listener is not None:
            self.change_listener()
        for ep in new_endpoints.values():
            self._learn(ep)
        for pool in new_pools.values():
            pool.dispatch()

    # --- lookups ---
    def candidates(self, model: str | None, environment: str = "prod") -> list[Pool] | None:
        """Pools of `environment` serving `model`; no model or "tgi" (TGI's name for its base model): the
        default pool's model; None for a model no pool there serves, or no model without a default pool.
        Staging pools are candidates only for requests that ask for staging, prod pools only for the rest."""
        if model is not None and model != "tgi":
            pools = self.by_model.get(model)
        elif self.default_pool is None:
            return None
        else:
            pools = self.by_model.get(self.pools[self.default_pool].model)
        return [p for p in pools or () if p.environment == environment] or None

    def adapter_candidates(self, model: str, environment: str = "prod") -> tuple[list[Pool], str] | None:
        """Pools of `environment` that loaded the LoRA adapter `model` names: `<servedName>/<adapter>`, or
        the adapter's name alone (any served name); with the adapter's name. None when no pool loaded it."""
        served, _, name = model.rpartition("/")
        pools = self.by_model.get(served, []) if served else list(self.pools.values())
        found = [p for p in pools if name in p.adapters and p.environment == environment]
        return (found, name) if found else None

    @staticmethod
    def choose(pools: list[Pool], counts: dict[str, int], max_new: int | None) -> Choice:
        """Apply the routing rule (module docstring) given input tokens per tokenizer key."""
        best: Pool | None = None
        for p in pools:
            n = counts[p.counter.key]
            if p.fits(n, max_new) and (
                best is None
                or (p.total_limit, -p.priority, p.name) < (best.total_limit, -best.priority, best.name)
            ):
                best = p
        if best is not None:
            return Choice(best)
        for p in pools:
            n = counts[p.counter.key]
            if p.accepts(n, max_new) and (
                best is None or (p.total_limit, p.priority) > (best.total_limit, best.priority)
            ):
                best = p
        if best is not None:
            return Choice(best)
        widest_input = max(pools, key=lambda p: p.input_limit)
        n_in = counts[widest_input.counter.key]
        if n_in > widest_input.input_limit:
            return Choice(
                None, f"`inputs` must have less than {widest_input.input_limit} tokens. Given: {n_in}"
            )
        widest = max(pools, key=lambda p: p.total_limit)
        n = counts[widest.counter.key]
        return Choice(
            None,
            f"`inputs` tokens + `max_new_tokens` must be <= {widest.total_limit}. "
            f"Given: {n} `inputs` tokens and {max_new} `max_new_tokens`",
        )

    # --- accounting ---
    def acquire(self, ep: Endpoint, tokens: int) -> None:
        ep.in_flight += 1
        ep.in_flight_tokens += tokens
        self._learn(ep)

    def _learn(self, ep: Endpoint) -> None:
        """Read the endpoint's limit from its /info once: a TGI server's (the others have no /info)."""
        if ep.configured_limit is not None or ep.info_requested or self.learn_limit is None:
            return
        if any(p.tgi_api for p in ep.pools):
            ep.info_requested = True
            self.learn_limit(ep)

    def release(self, ep: Endpoint, tokens: int) -> None:
        ep.in_flight -= 1
        ep.in_flight_tokens -= tokens
        ep.busy_until = 0.0  # one of ours finished: it has room again
        for pool in ep.pools:
            pool.dispatch()

    def mark_down(self, ep: Endpoint) -> None:
        ep.down_until = time.monotonic() + DOWN_SECONDS
        self._redispatch_later(ep, DOWN_SECONDS)

    def mark_busy(self, ep: Endpoint) -> None:
        ep.busy_until = time.monotonic() + BUSY_SECONDS
        self._redispatch_later(ep, BUSY_SECONDS)

    def set_learned_limit(self, ep: Endpoint, limit: int) -> None:
        changed = ep.learned_limit != limit
        ep.learned_limit = limit
        if changed and self.change_listener is not None:
            self.change_listener()
        for pool in ep.pools:
            pool.dispatch()

    def _redispatch_later(self, ep: Endpoint, delay: float) -> None:
        loop = asyncio.get_running_loop()
        for pool in ep.pools:
            loop.call_later(delay + 0.001, pool.dispatch)

    def on_queue_change(self, pool: Pool) -> None:
        if self.queue_listener is not None:
            self.queue_listener(pool)

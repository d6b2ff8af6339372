"""Serve seeded Poisson traffic on a set of pools with the emulator's own scheduler, in virtual time.

Each replica is an emulator `Scheduler` (continuous batching, chunked prefill, decode steps that slow with the
batch: `emulator/scheduler.py`), so the planner's predictions and the emulated cluster share one latency
model. Requests go where the gateway sends them: the smallest pool that fits (`gateway/routing.py`), the
replica with the fewest requests in flight, a FIFO wait in the pool above `maxConcurrentRequests` per
replica; a short request may spill to a wider pool that fits and has room, never the reverse.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from dataclasses import dataclass, field

from tgipool.emulator.metrics import TgiMetrics
from tgipool.emulator.scheduler import Scheduler, Sequence
from tgipool.emulator.settings import EmulatorSettings
from tgipool.emulator.tokens import TextSource, TokenSpan
from tgipool.emulator.validation import ValidRequest
from tgipool.sizing import virtual_time
from tgipool.sizing.traffic import Replica, Sampler, Traffic

_SPAN = TokenSpan(0, "a", 0, 1)
_VOCAB = [(1, "a")]


@dataclass(frozen=True)
class PoolLayout:
    name: str
    max_input_tokens: int
    max_total_tokens: int
    replicas: int

    def fits(self, n_in: int, n_out: int) -> bool:
        return n_in <= self.max_input_tokens and n_in + n_out <= self.max_total_tokens


@dataclass
class ClassResult:
    name: str
    target: float
    latencies: list[float] = field(default_factory=list)
    unfinished: int = 0
    completions: list[float] = field(default_factory=list)  # seconds from the start, every request

    @property
    def count(self) -> int:
        return len(self.latencies) + self.unfinished

    def quantile(self, q: float) -> float:
        """Nearest-rank quantile; unfinished requests count as slower than every finished one."""
        if self.count == 0:
            return 0.0
        rank = math.ceil(q * self.count) - 1
        ordered = sorted(self.latencies)
        return ordered[rank] if rank < len(ordered) else math.inf

    @property
    def p50(self) -> float:
        return self.quantile(0.50)

    @property
    def p95(self) -> float:
        return self.quantile(0.95)

    @property
    def attainment(self) -> float:
        """Fraction of requests that met the class's p95 target."""
        return sum(1 for t in self.latencies if t <= self.target) / self.count if self.count else 1.0


class _Replica:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.in_flight = 0


class _Pool:
    def __init__(self, layout: PoolLayout, model: Replica, round_robin: bool) -> None:
        self.layout = layout
        self.round_robin = round_robin
        self.cap = model.max_concurrent_requests
        settings = EmulatorSettings(
            max_input_tokens=layout.max_input_tokens,
            max_total_tokens=layout.max_total_tokens,
            max_batch_total_tokens=max(model.max_batch_total_tokens, layout.max_total_tokens),
            max_batch_prefill_tokens=model.max_batch_prefill_tokens,
            prefill_tokens_per_second=model.prefill_tokens_per_second,
            decode_step_ms=model.decode_step_ms,
            decode_step_growth_ms=model.decode_step_growth_ms,
            max_concurrent_requests=model.max_concurrent_requests,
        ).resolved()
        clock = virtual_time.LoopClock()
        self.replicas = [
            _Replica(Scheduler(settings, TgiMetrics(layout.max_input_tokens, layout.max_total_tokens), clock))
            for _ in range(layout.replicas)
        ]
        self.waiting: deque[asyncio.Future[_Replica]] = deque()
        self._turn = 0

    def free(self) -> _Replica | None:
        """Fewest in flight below the cap; ties rotate, as the gateway's picker does."""
        n = len(self.replicas)
        self._turn += 1
        best: _Replica | None = None
        if self.round_robin:  # a plain proxy (nginx): the next replica, whatever it is doing
            best = self.replicas[self._turn % n]
            best.in_flight += 1
            return best
        for i in range(n):
            r = self.replicas[(self._turn + i) % n]
            if r.in_flight < self.cap and (best is None or r.in_flight < best.in_flight):
                best = r
        if best is not None:
            best.in_flight += 1
        return best

    def release(self, r: _Replica) -> None:
        r.in_flight -= 1
        while self.waiting and r.in_flight < self.cap:
            fut = self.waiting.popleft()
            if not fut.done():
                r.in_flight += 1
                fut.set_result(r)


async def _serve(pool: _Pool, replica: _Replica | None, n_in: int, n_out: int) -> None:
    if replica is None:
        fut: asyncio.Future[_Replica] = asyncio.get_running_loop().create_future()
        pool.waiting.append(fut)
        replica = await fut
    request = ValidRequest(
        inputs="",
        input_tokens=[_SPAN] * n_in,
        max_new_tokens=n_out,
        total_new_tokens=n_out,
        stop=[],
        do_sample=False,
        seed=0,
        details=False,
        decoder_input_details=False,
        top_n_tokens=0,
    )
    seq = Sequence(request=request, source=TextSource(_VOCAB, "", 0), queued_at=0.0, stream=False)
    replica.scheduler.submit(seq)
    try:
        await seq.done.wait()
    finally:
        pool.release(replica)


def _route(pools: list[_Pool], n_in: int, n_out: int) -> tuple[_Pool, _Replica | None] | None:
    fitting = sorted(
        (p for p in pools if p.layout.fits(n_in, n_out)), key=lambda p: p.layout.max_total_tokens
    )
    if not fitting:
        return None
    first = fitting[0]
    replica = first.free() if not first.waiting else None
    if replica is not None:
        return first, replica
    for wider in fitting[1:]:  # spill to a wider pool with room; a wider pool never spills back
        r = wider.free() if not wider.waiting else None
        if r is not None:
            return wider, r
    return first, None


def simulate(
    traffic: Traffic,
    layouts: list[PoolLayout],
    seconds: float = 120.0,
    seed: int = 1,
    warmup: float = 10.0,
    round_robin: bool = False,
) -> dict[str, ClassResult]:
    """Per-class latency of `traffic` served by `layouts`, measured on requests arriving after `warmup`.
    `round_robin`: replicas taken in turn (a plain proxy) instead of the gateway's least-loaded pick."""
    return virtual_time.run(_simulate(traffic, layouts, seconds, seed, warmup, round_robin))


async def _simulate(
    traffic: Traffic, layouts: list[PoolLayout], seconds: float, seed: int, warmup: float, round_robin: bool
) -> dict[str, ClassResult]:
    pools = [_Pool(layout, traffic.replica, round_robin) for layout in layouts]
    runners = [asyncio.create_task(r.scheduler.run()) for p in pools for r in p.replicas]
    results = {c.name: ClassResult(c.name, c.p95_seconds) for c in traffic.classes}
    rng = random.Random(seed)  # noqa: S311 - seeded, reproducible arrivals, not secrets
    samplers = [(c, Sampler(c.input_tokens), Sampler(c.output_tokens)) for c in traffic.classes]
    shares = [c.share for c in traffic.classes]
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending: set[asyncio.Task[None]] = set()

    async def one(name: str, pool: _Pool, replica: _Replica | None, n_in: int, n_out: int) -> None:
        arrived = loop.time()
        counted = arrived - start >= warmup
        try:
            await _serve(pool, replica, n_in, n_out)
        except asyncio.CancelledError:
            if counted:
                results[name].unfinished += 1
            raise
        results[name].completions.append(loop.time() - start)
        if counted:
            results[name].latencies.append(loop.time() - arrived)

    t = 0.0
    while True:
        t += rng.expovariate(traffic.rate_per_second)
        if t >= seconds:
            break
        cls, s_in, s_out = rng.choices(samplers, weights=shares)[0]
        n_in, n_out = s_in.draw(rng), s_out.draw(rng)
        await asyncio.sleep(max(start + t - loop.time(), 0.0))
        routed = _route(pools, n_in, n_out)
        if routed is None:
            raise ValueError(f"class {cls.name}: no pool fits {n_in} + {n_out} tokens")
        task = asyncio.create_task(one(cls.name, *routed, n_in, n_out))
        pending.add(task)
        task.add_done_callback(pending.discard)
    # Drain, bounded: an overloaded layout would take ever longer; what is left counts as unfinished.
    if pending:
        _, late = await asyncio.wait(set(pending), timeout=2 * seconds + 60)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    for task in runners:
        task.cancel()
    return results


def capacity(traffic: Traffic, layouts: list[PoolLayout], seconds: float = 60.0, seed: int = 1) -> float:
    """Requests per second `layouts` complete when offered more than they can serve (here 4x the rate of
    `traffic`): the saturation throughput that load percentages refer to."""
    warmup = seconds / 4
    results = simulate(traffic.scaled(traffic.rate_per_second * 4), layouts, seconds, seed, warmup)
    done = sum(1 for r in results.values() for t in r.completions if warmup <= t <= seconds)
    return done / (seconds - warmup)

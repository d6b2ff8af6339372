"""Continuous batching: one asyncio task plays the role of TGI's v3 backend loop and the GPU.

Each loop iteration is one "forward pass" of the emulated model:

1. Admission (FIFO, like `backends/v3/src/queue.rs`): waiting requests join while the batch's token budget
   (sum of `input_length + max_new_tokens` over all admitted sequences) stays within
   `max_batch_total_tokens` (and the batch within `max_batch_size`). The head of the queue blocks the rest.
2. Prefill (chunked): up to `max_batch_prefill_tokens` prompt tokens of admitted sequences are processed,
   costing `tokens / prefill_tokens_per_second`. A sequence whose prompt is fully prefilled emits its first
   token (TGI's prefill produces one token) and joins the decoding batch.
3. Decode: every decoding sequence gets one token; the step costs
   `decode_step_ms + decode_step_growth_ms * batch_size`. Finished sequences leave the batch.

So a request's latency is roughly `L_in / P + L_out * step(B) + queueing`, and higher load shows up as
longer queue time and slower steps, as on a GPU. Time comes from a `Clock`; sleeps aim at absolute
deadlines so Python overhead does not accumulate on top of the modelled step time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from tgipool.emulator.metrics import TgiMetrics
from tgipool.emulator.settings import EmulatorSettings
from tgipool.emulator.tokens import OutputToken, TextSource
from tgipool.emulator.validation import ValidRequest


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class RealClock:
    """Monotonic wall clock; `time_scale` > 1 runs the model faster than real time (for experiments)."""

    def __init__(self, time_scale: float = 1.0) -> None:
        self.time_scale = time_scale

    def now(self) -> float:
        return time.monotonic() * self.time_scale

    async def sleep_until(self, deadline: float) -> None:
        delay = (deadline - self.now()) / self.time_scale
        await asyncio.sleep(delay if delay > 0 else 0)


@dataclass(eq=False)
class Sequence:
    """One request inside the emulated backend. `events` carries tokens for streaming handlers."""

    request: ValidRequest
    source: TextSource
    queued_at: float
    stream: bool
    started_at: float | None = None
    first_token_at: float | None = None  # time to first token, for the engines that export it
    finished_at: float | None = None
    prefilled: int = 0
    tokens: list[OutputToken] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    cancelled: bool = False
    events: asyncio.Queue[OutputToken] = field(default_factory=asyncio.Queue)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def budget(self) -> int:
        return self.request.input_length + self.request.total_new_tokens

    def cancel(self) -> None:
        """Client went away: the scheduler drops the sequence at its next iteration."""
        self.cancelled = True

    def _emit(self, token: OutputToken) -> bool:
        """Record one generated token; returns True when the sequence is finished."""
        self.tokens.append(token)
        self.text += token.text
        if len(self.tokens) >= self.request.total_new_tokens:
            self.finish_reason = "length"
        elif any(self.text.endswith(s) for s in self.request.stop if s):
            self.finish_reason = "stop_sequence"
        if self.stream:
            self.events.put_nowait(token)
        return self.finish_reason is not None


class Scheduler:
    def __init__(self, settings: EmulatorSettings, metrics: TgiMetrics, clock: Clock) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self._waiting: deque[Sequence] = deque()
        self._prefilling: list[Sequence] = []
        self._running: list[Sequence] = []
        self._wake = asyncio.Event()
        self._cursor = 0.0
        self._prefill_s_per_token = 1.0 / settings.prefill_tokens_per_second
        self.metrics.set(self.metrics.queue_size, 0)
        self.metrics.set(self.metrics.batch_current_size, 0)
        self.metrics.set(self.metrics.batch_current_max_tokens, 0)

    # --- introspection (tests, `tgipool sim`) ---
    @property
    def queue_size(self) -> int:
        return len(self._waiting)

    @property
    def batch_size(self) -> int:
        return len(self._prefilling) + len(self._running)

    @property
    def kv_usage(self) -> float:
        """Share of the batch token budget held by admitted sequences (the KV cache they reserve)."""
        used = sum(s.budget for s in self._prefilling) + sum(s.budget for s in self._running)
        return min(1.0, used / self.settings.batch_token_budget)

    def submit(self, sequence: Sequence) -> None:
        self._waiting.append(sequence)
        self.metrics.set(self.metrics.queue_size, len(self._waiting))
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not (self._waiting or self._prefilling or self._running):
                self._wake.clear()
                await self._wake.wait()
                self._cursor = self.clock.now()
            self._drop_cancelled()
            self._admit()
            if self._prefilling:
                await self._prefill_step()
            if self._running:
                await self._decode_step()

    async def _advance(self, seconds: float) -> None:
        # Deadline-based: if the previous step overran, start from now; never run faster than the model.
        deadline = max(self._cursor + seconds, self.clock.now())
        await self.clock.sleep_until(deadline)
        self._cursor = deadline

    def _drop_cancelled(self) -> None:
        if any(s.cancelled for s in self._waiting):
            self._waiting = deque(s for s in self._waiting if not s.cancelled)
        self._prefilling = [s for s in self._prefilling if not s.cancelled]
        self._running = [s for s in self._running if not s.cancelled]

    def _admit(self) -> None:
        used = sum(s.budget for s in self._prefilling) + sum(s.budget for s in self._running)
        max_size = self.settings.max_batch_size
        admitted = 0
        while self._waiting:
            seq = self._waiting[0]
            if used + seq.budget > self.settings.batch_token_budget:
                break
            if max_size is not None and self.batch_size >= max_size:
                break
            self._waiting.popleft()
            used += seq.budget
            seq.started_at = self.clock.now()
            self._prefilling.append(seq)
            admitted += 1
        if admitted:
            self.metrics.observe(self.metrics.batch_next_size, admitted)
        self._update_gauges(used)

    def _update_gauges(self, used: int | None = None) -> None:
        if used is None:
            used = sum(s.budget for s in self._prefilling) + sum(s.budget for s in self._running)
        m = self.metrics
        m.set(m.queue_size, len(self._waiting))
        m.set(m.batch_current_size, self.batch_size)
        m.set(m.batch_current_max_tokens, used)

    async def _prefill_step(self) -> None:
        budget = self.settings.prefill_budget
        chunk: list[tuple[Sequence, int]] = []
        for seq in self._prefilling:
            if budget <= 0:
                break
            take = min(seq.request.input_length - seq.prefilled, budget)
            chunk.append((seq, take))
            budget -= take
        n_tokens = sum(take for _, take in chunk)
        start = self.clock.now()
        self.metrics.inc(self.metrics.batch_inference_count, "prefill")
        await self._advance(n_tokens * self._prefill_s_per_token)
        finished_prefill: list[Sequence] = []
        for seq, take in chunk:
            seq.prefilled += take
            if seq.prefilled >= seq.request.input_length:
                finished_prefill.append(seq)
        now = self.clock.now()
        for seq in finished_prefill:
            self._prefilling.remove(seq)
            if seq.cancelled:
                continue
            seq.first_token_at = now
            if seq._emit(seq.source.next()):
                self._finish(seq, now)
            else:
                self._running.append(seq)
        self._record_batch("prefill", now - start)
        self._update_gauges()

    async def _decode_step(self) -> None:
        batch = self._running
        start = self.clock.now()
        self.metrics.inc(self.metrics.batch_inference_count, "decode")
        step_ms = self.settings.decode_step_ms + self.settings.decode_step_growth_ms * len(batch)
        await self._advance(step_ms / 1000.0)
        now = self.clock.now()
        still: list[Sequence] = []
        for seq in batch:
            if seq.cancelled:
                continue
            if seq._emit(seq.source.next()):
                self._finish(seq, now)
            else:
                still.append(seq)
        self._running = still
        self._record_batch("decode", now - start)
        self._update_gauges()

    def _record_batch(self, method: str, seconds: float) -> None:
        m = self.metrics
        m.inc(m.batch_inference_success, method)
        m.observe(m.batch_inference_duration, seconds, method)
        m.observe(m.batch_forward_duration, seconds, method)

    def _finish(self, seq: Sequence, now: float) -> None:
        seq.finished_at = now
        seq.done.set()

"""The emulated router core: permits, validation, scheduling, timings and per-request metrics.

`generate()` and `generate_stream()` mirror `generate_internal` / `generate_stream_internal` in TGI's
`router/src/server.rs` (including where each metric is recorded), and `_start()` mirrors
`Infer::generate_stream`: the concurrency permit is taken *before* validation, so an overloaded server
answers 429 even to an invalid request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from tgipool.emulator.dialects import DIALECTS, Dialect
from tgipool.emulator.errors import IncompleteGenerationError, InferError, OverloadedError, ValidationError
from tgipool.emulator.loading import LoadPhase
from tgipool.emulator.metrics import TgiMetrics
from tgipool.emulator.openai_metrics import EngineMetrics
from tgipool.emulator.scheduler import Clock, RealClock, Scheduler, Sequence
from tgipool.emulator.settings import TGI_VERSION, EmulatorSettings
from tgipool.emulator.tokens import OutputToken, TextSource, TokenSpan, load_tokenizer
from tgipool.emulator.validation import GenerateRequest, validate, validate_best_of

StreamItem = dict[str, Any] | InferError


def _ms(seconds: float) -> str:
    return str(int(max(seconds, 0.0) * 1000))  # Duration::as_millis truncates


def token_json(token: OutputToken) -> dict[str, Any]:
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": False}


class Emulator:
    """One emulated TGI server (router + backend + model), independent of any other in the process."""

    def __init__(self, settings: EmulatorSettings, clock: Clock | None = None) -> None:
        self.settings = settings.resolved()
        self.tokenizer = load_tokenizer(self.settings.tokenizer)
        self.vocab = self.tokenizer.output_vocabulary()
        self.metrics = TgiMetrics(self.settings.input_limit, self.settings.total_limit)
        self.clock: Clock = clock or RealClock()
        self.scheduler = Scheduler(self.settings, self.metrics, self.clock)
        # vLLM / SGLang: their own answers and series on the same recording (TGI's metrics stay internal).
        self.dialect: Dialect | None = DIALECTS.get(self.settings.engine)
        self.engine_metrics: EngineMetrics | None = None
        if self.dialect is not None:
            sched = self.scheduler
            self.engine_metrics = EngineMetrics(
                self.settings.engine,
                self.settings.version,
                self.settings.model_name,
                lambda: (sched.queue_size, sched.batch_size, sched.kv_usage),
            )
        self.permits_available = self.settings.max_concurrent_requests
        self.load = LoadPhase(self.settings.load_seconds, self.clock)
        self._task: asyncio.Task[None] | None = None
        # The adapter each admitted request ran with (None: the base model), for tests and demos.
        self.adapters_used: list[str | None] = []
        self._texts: dict[int, str] = dict(self.vocab)

    # --- lifecycle ---
    def start(self) -> None:
        if self._task is None:
            self.load.begin()
            self._task = asyncio.create_task(self.scheduler.run(), name=f"tgi-emulator-{self.settings.port}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def info(self) -> dict[str, Any]:
        s = self.settings
        info: dict[str, Any] = {"model_id": s.model_id}
        if s.model_sha is not None:
            info["model_sha"] = s.model_sha
        if s.model_pipeline_tag is not None:
            info["model_pipeline_tag"] = s.model_pipeline_tag
        info.update(
            max_concurrent_requests=s.max_concurrent_requests,
            max_best_of=s.max_best_of,
            max_stop_sequences=s.max_stop_sequences,
            max_input_tokens=s.input_limit,
            max_total_tokens=s.total_limit,
            validation_workers=s.validation_workers,
            max_client_batch_size=s.max_client_batch_size,
            router="text-generation-router",
            version=TGI_VERSION,
            sha=s.sha,
            docker_label=s.docker_label,
        )
        return info

    def remember_tokens(self, spans: list[TokenSpan]) -> None:
        """Token texts by id, as /tokenize gave them, so /detokenize can give them back."""
        for t in spans:
            self._texts[t.id] = t.text

    def detokenize(self, ids: list[int]) -> str:
        return "".join(self._texts.get(i, "") for i in ids)

    def response_id(self, prefix: str) -> str:
        """The `id` of an OpenAI response: TGI leaves it empty."""
        return self.dialect.response_id(prefix) if self.dialect is not None else ""

    def stream_error(self, err: InferError, chat: bool) -> dict[str, Any]:
        """An error event inside an OpenAI stream, in the server's shape."""
        if self.dialect is not None:
            return self.dialect.error(400 if err.status == 422 else err.status, err.message)
        return {"error": {"message": err.message, "http_status_code": 422}} if chat else err.to_json()

    # --- Infer::generate_stream ---
    def _start(self, request: GenerateRequest, stream: bool) -> Sequence:
        m = self.metrics
        if self.permits_available <= 0:
            m.inc(m.request_failure, "overloaded")
            raise OverloadedError()
        self.permits_available -= 1
        try:
            valid = validate(self.settings, self.tokenizer, request)
        except ValidationError:
            self.permits_available += 1
            m.inc(m.request_failure, "validation")
            raise
        # TGI looks the adapter up and falls back to the base model (index 0) for an id it did not load:
        # no error (huggingface/text-generation-inference#2505).
        adapter = request.parameters.adapter_id
        self.adapters_used.append(adapter if adapter in self.settings.adapter_ids else None)
        m.observe(m.request_input_length, valid.input_length)
        m.observe(m.request_max_new_tokens, valid.max_new_tokens)
        seed = valid.seed if valid.do_sample else None
        seq = Sequence(
            request=valid,
            source=TextSource(self.vocab, request.inputs, seed),
            queued_at=self.clock.now(),
            stream=stream,
        )
        self.scheduler.submit(seq)
        return seq

    def _end(self, seq: Sequence) -> None:
        """Drop the permit (the OwnedSemaphorePermit going out of scope in TGI)."""
        if not seq.done.is_set():
            seq.cancel()
            if self.engine_metrics is not None:
                self.engine_metrics.aborted()
        self.permits_available += 1

    async def _generate_one(self, request: GenerateRequest) -> Sequence:
        seq = self._start(request, stream=False)
        try:
            await seq.done.wait()
        finally:
            self._end(seq)
        if seq.finish_reason is None or seq.started_at is None:
            self.metrics.inc(self.metrics.request_failure, "incomplete")
            raise IncompleteGenerationError()
        return seq

    def _top_tokens(self, token: OutputToken, n: int) -> list[dict[str, Any]]:
        if n <= 0:
            return []
        first = next((i for i, (tid, _) in enumerate(self.vocab) if tid == token.id), 0)
        out = [token_json(token)]
        for k in range(1, n):
            tid, text = self.vocab[(first + k) % len(self.vocab)]
            out.append(
                {"id": tid, "text": text, "logprob": round(token.logprob - k * 0.5, 4), "special": False}
            )
        return out

    def _details(self, seq: Sequence, with_prefill: bool) -> dict[str, Any]:
        req = seq.request
        prefill: list[dict[str, Any]] = []
        if with_prefill:
            prefill = [
                {"id": t.id, "text": t.text, "logprob": None if i == 0 else -1.0 - (t.id % 7) / 2.0}
                for i, t in enumerate(req.input_tokens)
            ]
        details: dict[str, Any] = {
            "finish_reason": seq.finish_reason,
            "generated_tokens": len(seq.tokens),
            "seed": req.seed if req.do_sample else None,
            "prefill": prefill,
            "tokens": [token_json(t) for t in seq.tokens],
        }
        if req.top_n_tokens:
            details["top_tokens"] = [self._top_tokens(t, req.top_n_tokens) for t in seq.tokens]
        return details

    def _record_success(self, start: float, seq: Sequence) -> dict[str, float]:
        assert seq.started_at is not None
        now = self.clock.now()
        n = max(len(seq.tokens), 1)
        t = {
            "total": now - start,
            "validation": seq.queued_at - start,
            "queue": seq.started_at - seq.queued_at,
            "inference": now - seq.started_at,
        }
        t["per_token"] = t["inference"] / n
        m = self.metrics
        m.inc(m.request_success)
        m.observe(m.request_duration, t["total"])
        m.observe(m.request_validation_duration, t["validation"])
        m.observe(m.request_queue_duration, t["queue"])
        m.observe(m.request_inference_duration, t["inference"])
        m.observe(m.request_mean_time_per_token_duration, t["per_token"])
        m.observe(m.request_generated_tokens, len(seq.tokens))
        if self.engine_metrics is not None:
            first = seq.first_token_at if seq.first_token_at is not None else now
            self.engine_metrics.finished(
                ttft=first - start,
                itl=(now - first) / max(len(seq.tokens) - 1, 1),
                e2e=t["total"],
                prompt_tokens=seq.request.input_length,
                generated=len(seq.tokens),
                reason="length" if seq.finish_reason == "length" else "stop",
            )
        return t

    # --- generate_internal ---
    async def generate(self, request: GenerateRequest) -> tuple[dict[str, str], dict[str, Any]]:
        start = self.clock.now()
        self.metrics.inc(self.metrics.request_count)
        p = request.parameters
        add_prompt = request.inputs if p.return_full_text else None
        with_details = p.details or p.decoder_input_details
        others: list[Sequence] = []
        if p.best_of is not None and p.best_of > 1:
            best_of = validate_best_of(self.settings, p.best_of)
            try:
                async with asyncio.TaskGroup() as tg:
                    tasks = [tg.create_task(self._generate_one(request)) for _ in range(best_of)]
            except* InferError as group:
                raise group.exceptions[0] from None
            seqs = [t.result() for t in tasks]
            seqs.sort(key=lambda s: -sum(t.logprob for t in s.tokens) / max(len(s.tokens), 1))
            seq, others = seqs[0], seqs[1:]
        else:
            seq = await self._generate_one(request)

        body: dict[str, Any] = {"generated_text": (add_prompt or "") + seq.text}
        if with_details:
            details = self._details(seq, p.decoder_input_details)
            if p.best_of is not None and p.best_of > 1:
                details["best_of_sequences"] = [
                    {
                        "generated_text": (add_prompt or "") + o.text,
                        "finish_reason": o.finish_reason,
                        "generated_tokens": len(o.tokens),
                        "seed": o.request.seed if o.request.do_sample else None,
                        "prefill": d["prefill"],
                        "tokens": d["tokens"],
                        **({"top_tokens": d["top_tokens"]} if "top_tokens" in d else {}),
                    }
                    for o in others
                    for d in [self._details(o, p.decoder_input_details)]
                ]
            body["details"] = details
        t = self._record_success(start, seq)
        headers = {
            "x-compute-type": self.settings.compute_type,
            "x-compute-time": repr(max(t["total"], 0.0)),  # TGI: seconds as f64, unlike the other x-*-time
            "x-compute-characters": str(len(request.inputs)),
            "x-total-time": _ms(t["total"]),
            "x-validation-time": _ms(t["validation"]),
            "x-queue-time": _ms(t["queue"]),
            "x-inference-time": _ms(t["inference"]),
            "x-time-per-token": _ms(t["per_token"]),
            "x-prompt-tokens": str(seq.request.input_length),
            "x-generated-tokens": str(len(seq.tokens)),
        }
        return headers, body

    # --- generate_stream_internal ---
    def stream_headers(self, request: GenerateRequest) -> dict[str, str]:
        return {
            "x-compute-type": self.settings.compute_type,
            "x-compute-characters": str(len(request.inputs)),
            "X-Accel-Buffering": "no",
        }

    async def generate_stream(self, request: GenerateRequest) -> AsyncGenerator[StreamItem, None]:
        """Yields StreamResponse dicts, or one InferError (sent as an SSE event on a 200 response)."""
        start = self.clock.now()
        m = self.metrics
        m.inc(m.request_count)
        p = request.parameters
        if (p.best_of if p.best_of is not None else 1) != 1:
            m.inc(m.request_failure, "validation")
            yield ValidationError("`best_of` != 1 is not supported when streaming tokens")
            return
        if p.decoder_input_details:
            m.inc(m.request_failure, "validation")
            yield ValidationError("`decoder_input_details` == true is not supported when streaming tokens")
            return
        try:
            seq = self._start(request, stream=True)
        except InferError as exc:
            yield exc
            return
        try:
            index = 0
            while True:
                token = await seq.events.get()
                index += 1
                item: dict[str, Any] = {"index": index, "token": token_json(token)}
                if seq.request.top_n_tokens:
                    item["top_tokens"] = self._top_tokens(token, seq.request.top_n_tokens)
                last = seq.finish_reason is not None and index == len(seq.tokens)
                if not last:
                    item["generated_text"] = None
                    item["details"] = None
                    yield item
                    continue
                self._record_success(start, seq)
                item["generated_text"] = (request.inputs if p.return_full_text else "") + seq.text
                item["details"] = (
                    {
                        "finish_reason": seq.finish_reason,
                        "generated_tokens": len(seq.tokens),
                        "seed": seq.request.seed if seq.request.do_sample else None,
                        "input_length": seq.request.input_length,
                    }
                    if p.details
                    else None
                )
                yield item
                return
        finally:
            self._end(seq)

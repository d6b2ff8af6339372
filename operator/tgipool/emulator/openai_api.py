"""TGI's OpenAI-compatible routes: `/v1/chat/completions` and `/v1/completions`.

Chat template: the emulator has no model files, so it renders messages with a fixed, documented template:
`<|{role}|>\n{content}\n` per message followed by `<|assistant|>\n` (text parts of list contents are
joined). Token counts of chat prompts therefore approximate, but are consistent with, `/tokenize`.

Quirks kept from TGI: `tgi_request_count` is incremented by the route and again by the inner generate
call; `temperature: 0` means greedy; `presence_penalty` becomes `repetition_penalty = p + 2`; chat stream
errors are `{"error":{"message":...,"http_status_code":422}}` followed by `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from tgipool.emulator import sse
from tgipool.emulator.engine import Emulator
from tgipool.emulator.errors import BodyRejectionError, InferError
from tgipool.emulator.validation import GenerateParameters, GenerateRequest, parse_parameters

_DESERIALIZE = "Failed to deserialize the JSON body into the target type: "


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [c for c in content if isinstance(c, dict) and c.get("type") == "text"]
        if not all(isinstance(c.get("text"), str) for c in parts):
            raise BodyRejectionError(
                422, f"{_DESERIALIZE}messages: data did not match any variant of untagged enum"
            )
        return "".join(c["text"] for c in parts)
    if content is None:
        return ""
    raise BodyRejectionError(422, f"{_DESERIALIZE}messages: data did not match any variant of untagged enum")


def render_chat(messages: list[Any]) -> str:
    parts = []
    for msg in messages:
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise BodyRejectionError(422, f"{_DESERIALIZE}messages: missing field `role`")
        parts.append(f"<|{msg['role']}|>\n{_content_text(msg.get('content'))}\n")
    return "".join(parts) + "<|assistant|>\n"


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    """Shared OpenAI → TGI parameter mapping (temperature 0 = greedy)."""
    temperature = body.get("temperature")
    if temperature == 0:
        do_sample, temperature = False, None
    else:
        do_sample = True
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    out: dict[str, Any] = {
        "do_sample": do_sample,
        "temperature": temperature,
        "frequency_penalty": body.get("frequency_penalty"),
        "top_p": body.get("top_p"),
        "seed": body.get("seed"),
        "stop": stop or [],
        "details": True,
    }
    return out


def _adapter(body: dict[str, Any]) -> str | None:
    """TGI: `model` absent or "tgi" is the base model; any other name is an adapter id."""
    model = body.get("model")
    return model if isinstance(model, str) and model != "tgi" else None


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _openai_finish(reason: str | None) -> str | None:
    return "stop" if reason == "eos_token" else reason


async def chat_completions(emu: Emulator, request: web.Request, body: Any) -> web.StreamResponse:
    emu.metrics.inc(emu.metrics.request_count)
    if not isinstance(body, dict):
        raise BodyRejectionError(422, f"{_DESERIALIZE}invalid type: expected struct ChatRequest")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BodyRejectionError(422, f"{_DESERIALIZE}missing field `messages`")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BodyRejectionError(
            422, f"{_DESERIALIZE}stream_options: invalid type: expected struct StreamOptions"
        )
    stream = bool(body.get("stream", False))
    raw = _sampling(body)
    presence = body.get("presence_penalty")
    raw["repetition_penalty"] = presence + 2 if isinstance(presence, int | float) else None
    # TGI: `max_completion_tokens.or(max_tokens)`: a null one counts as absent.
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    raw["max_new_tokens"] = max_tokens
    raw["adapter_id"] = _adapter(body)
    raw["decoder_input_details"] = not stream
    if body.get("top_logprobs") is not None and body.get("logprobs"):
        raw["top_n_tokens"] = body["top_logprobs"]
    if isinstance(body.get("response_format"), dict):
        raw["grammar"] = body["response_format"]
    params = parse_parameters(raw)
    gen = GenerateRequest(inputs=render_chat(messages), parameters=params)
    model_id = emu.settings.model_name
    fingerprint = emu.settings.system_fingerprint if emu.dialect is None else None

    if not stream:
        headers, out = await emu.generate(gen)
        details = out["details"]
        resp = {
            "object": "chat.completion",
            "id": emu.response_id("chatcmpl"),
            "created": int(time.time()),
            "model": model_id,
            "system_fingerprint": fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": out["generated_text"]},
                    "logprobs": None,
                    "finish_reason": _openai_finish(details["finish_reason"]),
                }
            ],
            "usage": _usage(len(details["prefill"]), details["generated_tokens"]),
        }
        return web.Response(body=sse.dumps(resp), headers=headers, content_type="application/json")

    include_usage = bool((options or {}).get("include_usage", False))
    stream_id = emu.response_id("chatcmpl")

    async def chunks() -> AsyncIterator[bytes]:
        events = emu.generate_stream(gen)
        try:
            async for item in events:
                if isinstance(item, InferError):
                    yield sse.event(emu.stream_error(item, chat=True))
                    continue
                details = item.get("details")
                chunk: dict[str, Any] = {
                    "object": "chat.completion.chunk",
                    "id": stream_id,
                    "created": int(time.time()),
                    "model": model_id,
                    "system_fingerprint": fingerprint,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": item["token"]["text"]},
                            "logprobs": None,
                            "finish_reason": _openai_finish(details["finish_reason"]) if details else None,
                        }
                    ],
                    "usage": _usage(details["input_length"], details["generated_tokens"])
                    if details and include_usage
                    else None,
                }
                yield sse.event(chunk)
            yield sse.DONE
        finally:
            await events.aclose()

    return await sse.respond(request, emu.stream_headers(gen), chunks())


async def completions(emu: Emulator, request: web.Request, body: Any) -> web.StreamResponse:
    emu.metrics.inc(emu.metrics.request_count)
    if not isinstance(body, dict):
        raise BodyRejectionError(422, f"{_DESERIALIZE}invalid type: expected struct CompletionRequest")
    prompt = body.get("prompt")
    if prompt is None:
        raise BodyRejectionError(422, f"{_DESERIALIZE}missing field `prompt`")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BodyRejectionError(
            422, f"{_DESERIALIZE}prompt: data did not match any variant of untagged enum"
        )
    stream = bool(body.get("stream", False))
    m = emu.metrics
    if body.get("suffix") is not None:
        m.inc(m.request_failure, "validation")
        raise _json_error(
            422,
            "Suffix is not supported and can be achieved by preprocessing the prompt.",
            "suffix not supported",
        )
    if len(prompts) > emu.settings.max_client_batch_size:
        m.inc(m.request_failure, "validation")
        raise _json_error(
            422,
            "Number of prompts exceeds the maximum allowed batch size of "
            f"{emu.settings.max_client_batch_size}",
            "batch size exceeded",
        )
    raw = _sampling(body)
    raw["repetition_penalty"] = body.get("repetition_penalty")
    raw["max_new_tokens"] = body.get("max_tokens") if body.get("max_tokens") is not None else 100
    raw["adapter_id"] = _adapter(body)
    raw["decoder_input_details"] = not stream
    params = parse_parameters(raw)
    requests = [GenerateRequest(inputs=p, parameters=GenerateParameters(**vars(params))) for p in prompts]
    model_id = emu.settings.model_name
    fingerprint = emu.settings.system_fingerprint if emu.dialect is None else None

    if not stream:
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(emu.generate(r)) for r in requests]
        except* InferError as group:
            raise group.exceptions[0] from None
        results = [t.result() for t in tasks]
        choices, prompt_tokens, completion_tokens = [], 0, 0
        totals: dict[str, int] = {}
        for index, (headers, out) in enumerate(results):
            details = out["details"]
            prompt_tokens += len(details["prefill"])
            completion_tokens += details["generated_tokens"]
            choices.append(
                {
                    "finish_reason": _openai_finish(details["finish_reason"]),
                    "index": index,
                    "logprobs": None,
                    "text": out["generated_text"],
                }
            )
            for key in (
                "x-compute-characters",
                "x-total-time",
                "x-validation-time",
                "x-queue-time",
                "x-inference-time",
                "x-time-per-token",
                "x-prompt-tokens",
                "x-generated-tokens",
            ):
                totals[key] = totals.get(key, 0) + int(headers[key])
        resp = {
            "object": "text_completion",
            "id": emu.response_id("cmpl"),
            "created": int(time.time()),
            "model": model_id,
            "system_fingerprint": fingerprint,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }
        out_headers = {"x-compute-type": emu.settings.compute_type, **{k: str(v) for k, v in totals.items()}}
        return web.Response(body=sse.dumps(resp), headers=out_headers, content_type="application/json")

    merged: asyncio.Queue[bytes | None] = asyncio.Queue()
    stream_id = emu.response_id("cmpl")

    async def pump(index: int, gen: GenerateRequest) -> None:
        events = emu.generate_stream(gen)
        try:
            async for item in events:
                if isinstance(item, InferError):
                    await merged.put(sse.event(emu.stream_error(item, chat=False)))
                    continue
                details = item.get("details")
                chunk: dict[str, Any] = {
                    "object": "text_completion",
                    "id": stream_id,
                    "created": int(time.time()),
                    "model": model_id,
                    "system_fingerprint": fingerprint,
                    "choices": [
                        {
                            "finish_reason": _openai_finish(details["finish_reason"]) if details else "",
                            "index": index,
                            "logprobs": None,
                            "text": item["token"]["text"],
                        }
                    ],
                }
                if details:
                    chunk["usage"] = _usage(details["input_length"], details["generated_tokens"])
                await merged.put(sse.event(chunk))
        finally:
            await events.aclose()
            await merged.put(None)

    async def chunks() -> AsyncIterator[bytes]:
        tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
        try:
            remaining = len(tasks)
            while remaining:
                item = await merged.get()
                if item is None:
                    remaining -= 1
                else:
                    yield item
            yield sse.DONE
        finally:
            for t in tasks:
                t.cancel()

    headers = {
        "x-compute-type": emu.settings.compute_type,
        "x-compute-characters": str(sum(len(r.inputs) for r in requests)),
        "X-Accel-Buffering": "no",
    }
    return await sse.respond(request, headers, chunks())


class JsonError(Exception):
    """A route-level JSON error that is not an InferError (completions' own checks)."""

    def __init__(self, status: int, payload: dict[str, str]) -> None:
        super().__init__(payload["error"])
        self.status = status
        self.payload = payload


def _json_error(status: int, message: str, error_type: str) -> JsonError:
    return JsonError(status, {"error": message, "error_type": error_type})

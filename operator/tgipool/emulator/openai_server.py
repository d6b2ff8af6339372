"""The HTTP API of an emulated vLLM or SGLang server, on the same `Emulator` (batching, timings) as TGI's.

Routes (a FastAPI app in both engines: other paths are 404 `{"detail":"Not Found"}`, TGI's `/generate`,
`/generate_stream` and `/info` included):

| | vLLM (`vllm/entrypoints/openai/api_server.py`) | SGLang (`sglang/srt/entrypoints/http_server.py`) |
|---|---|---|
| OpenAI | `/v1/chat/completions`, `/v1/completions`, `/v1/models` | the same |
| health | `GET /health`, `GET|POST /ping` | `GET /health`, `GET /health_generate` |
| other | `POST /tokenize`, `POST /detokenize`, `GET /version` | `GET /get_model_info` |
| metrics | `GET /metrics` (names: engine_metrics.py) | the same |

Not emulated: SGLang's native `POST /generate` (its own body, not TGI's: 404 here), vLLM's `/invocations`,
`/v1/embeddings`, `/load`. The OpenAI bodies are TGI's emulated ones (openai_api.py) with the engine's
ids, model name and error shape (dialects.py); vLLM answers 404 for a `model` it does not serve.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tgipool.emulator import openai_api
from tgipool.emulator.dialects import Dialect
from tgipool.emulator.engine import Emulator
from tgipool.emulator.errors import BodyRejectionError, InferError
from tgipool.emulator.server import EMULATOR_KEY, json_response, read_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_GENERATION = {"/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"}
_HEALTH = {"/health", "/ping", "/health_generate"}


class ModelNotFoundError(Exception):
    pass


def _emu(request: web.Request) -> Emulator:
    return request.app[EMULATOR_KEY]


def _dialect(emu: Emulator) -> Dialect:
    assert emu.dialect is not None
    return emu.dialect


def _json(obj: Any, status: int = 200) -> web.Response:
    return json_response(obj, status)


@web.middleware
async def engine_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    emu = _emu(request)
    d = _dialect(emu)
    loading = emu.load.error()
    if loading is not None:  # the server is not up yet: health fails, nothing is served
        if request.path in _HEALTH:
            return web.Response(status=503)
        if request.method == "POST" and request.path in _GENERATION:
            return _json(d.error(503, "The server is loading the model"), 503)
    key = emu.settings.api_key
    authorized = request.headers.get("Authorization", "") == f"Bearer {key}"
    if key is not None and request.path.startswith("/v1/") and not authorized:
        return _json({"error": "Unauthorized"}, 401)
    try:
        return await handler(request)
    except BodyRejectionError as exc:
        return _json(d.error(413 if exc.status == 413 else 400, exc.text), 413 if exc.status == 413 else 400)
    except InferError as exc:
        status = 400 if exc.status == 422 else exc.status
        return _json(d.error(status, exc.message), status)
    except openai_api.JsonError as exc:
        return _json(d.error(400, exc.payload["error"]), 400)
    except ModelNotFoundError as exc:
        return _json(d.error(404, str(exc)), 404)
    except web.HTTPNotFound:
        return _json({"detail": "Not Found"}, 404)
    except web.HTTPMethodNotAllowed:
        return _json({"detail": "Method Not Allowed"}, 405)


def _for_engine(emu: Emulator, body: Any) -> Any:
    """The body as the emulated core takes it: the served name is the base model ("tgi" there), an adapter
    keeps its id; vLLM refuses any other name, SGLang ignores the field."""
    if not isinstance(body, dict):
        return body
    model = body.get("model")
    if model is None or model == emu.settings.model_name:
        return {**body, "model": "tgi"}
    if isinstance(model, str) and model in emu.settings.adapter_ids:
        return body
    if _dialect(emu).strict_model:
        raise ModelNotFoundError(f"The model `{model}` does not exist.")
    return {**body, "model": "tgi"}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    emu = _emu(request)
    return await openai_api.chat_completions(emu, request, _for_engine(emu, await read_json(request)))


async def completions(request: web.Request) -> web.StreamResponse:
    emu = _emu(request)
    return await openai_api.completions(emu, request, _for_engine(emu, await read_json(request)))


async def models(request: web.Request) -> web.StreamResponse:
    emu = _emu(request)
    s = emu.settings
    card = {
        "id": s.model_name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": s.engine,
        "root": s.model_id,
        "parent": None,
        "max_model_len": s.total_limit,
    }
    adapters = [
        {**card, "id": a, "root": a, "parent": s.model_name} for a in sorted(emu.settings.adapter_ids)
    ]
    return _json({"object": "list", "data": [card, *adapters]})


async def tokenize(request: web.Request) -> web.StreamResponse:
    """vLLM: `{"prompt"}` or `{"messages"}` -> `{"count","max_model_len","tokens","token_strs"}`."""
    emu = _emu(request)
    body = _for_engine(emu, await read_json(request))
    if not isinstance(body, dict):
        raise BodyRejectionError(400, "Request body must be a JSON object")
    if isinstance(body.get("messages"), list):
        text = openai_api.render_chat(body["messages"])
    elif isinstance(body.get("prompt"), str):
        text = body["prompt"]
    else:
        raise BodyRejectionError(400, "Either `prompt` or `messages` must be given")
    spans = emu.tokenizer.encode(text)
    emu.remember_tokens(spans)
    return _json(
        {
            "count": len(spans),
            "max_model_len": emu.settings.total_limit,
            "tokens": [t.id for t in spans],
            "token_strs": None,
        }
    )


async def detokenize(request: web.Request) -> web.StreamResponse:
    emu = _emu(request)
    body = _for_engine(emu, await read_json(request))
    ids = body.get("tokens") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise BodyRejectionError(400, "`tokens` must be a list of token ids")
    return _json({"prompt": emu.detokenize(ids)})


async def version(request: web.Request) -> web.StreamResponse:
    return _json({"version": _emu(request).settings.version})


async def ok(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200)


async def model_info(request: web.Request) -> web.StreamResponse:
    s = _emu(request).settings
    return _json({"model_path": s.model_id, "tokenizer_path": s.model_id, "is_generation": True})


async def metrics(request: web.Request) -> web.StreamResponse:
    engine_metrics = _emu(request).engine_metrics
    assert engine_metrics is not None
    return web.Response(
        text=engine_metrics.render(), content_type="text/plain", headers={"X-Engine": engine_metrics.engine}
    )


# Per engine: (method, path) -> handler. The OpenAI routes and health are common to both.
_COMMON: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/completions"): completions,
    ("GET", "/v1/models"): models,
    ("GET", "/health"): ok,
    ("GET", "/metrics"): metrics,
}
ROUTES: dict[str, dict[tuple[str, str], Handler]] = {
    "vllm": {
        **_COMMON,
        ("GET", "/ping"): ok,
        ("POST", "/ping"): ok,
        ("POST", "/tokenize"): tokenize,
        ("POST", "/detokenize"): detokenize,
        ("GET", "/version"): version,
    },
    "sglang": {**_COMMON, ("GET", "/health_generate"): ok, ("GET", "/get_model_info"): model_info},
}


def add_routes(app: web.Application, engine: str) -> None:
    routes = ROUTES[engine]
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    paths = {p for _, p in routes}

    async def fallback(request: web.Request) -> web.StreamResponse:
        if request.path in paths:
            return _json({"detail": "Method Not Allowed"}, 405)
        return _json({"detail": "Not Found"}, 404)

    app.router.add_route("*", "/{tail:.*}", fallback)

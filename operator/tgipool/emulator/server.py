"""aiohttp application exposing TGI's HTTP API on top of an `Emulator`.

Routes and auth follow `router/src/server.rs`: generation routes (and /tokenize) are protected by the
optional API key (401, empty body); `GET /`, `/health`, `/ping`, `/info`, `/metrics`, `/v1/models` are not.
Body problems get axum's plain-text rejections (415 content type, 400 bad JSON, 422 wrong shape,
413 payload limit), everything else TGI's `{"error","error_type"}` JSON. While the emulator loads
(`load_seconds`), health routes and generation routes answer 503 (see `loading.py`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import HttpVersion11, web

from tgipool import strict_json
from tgipool.emulator import openai_api, sse
from tgipool.emulator.engine import Emulator
from tgipool.emulator.errors import BodyRejectionError, InferError
from tgipool.emulator.loading import UNHEALTHY
from tgipool.emulator.scheduler import Clock
from tgipool.emulator.settings import EmulatorSettings
from tgipool.emulator.validation import parse_generate_request

EMULATOR_KEY = web.AppKey("tgipool_emulator", Emulator)
_PROTECTED = {
    "/",
    "/generate",
    "/generate_stream",
    "/v1/chat/completions",
    "/v1/completions",
    "/tokenize",
    "/invocations",
}
_HEALTH = {"/", "/health", "/ping"}
_PAYLOAD_TOO_LARGE = "Failed to buffer the request body: length limit exceeded"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _emu(request: web.Request) -> Emulator:
    return request.app[EMULATOR_KEY]


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=sse.dumps(obj), status=status, headers=headers, content_type="application/json")


async def read_json(request: web.Request) -> Any:
    """axum's `Json` extractor: content type, then body limit, then syntax."""
    ctype = request.content_type
    if not (ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))):
        raise BodyRejectionError(415, "Expected request with `Content-Type: application/json`")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise BodyRejectionError(413, _PAYLOAD_TOO_LARGE) from exc
    try:
        return strict_json.loads(raw)  # what serde_json refuses: 400, never a 500 later
    except strict_json.JsonSyntaxError as exc:
        raise BodyRejectionError(400, f"Failed to parse the request body as JSON: {exc}") from exc


@web.middleware
async def tgi_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    emu = _emu(request)
    loading = emu.load.error()
    if loading is not None:  # real TGI would not be listening yet: not ready, nothing served
        if request.method == "GET" and request.path in _HEALTH:
            return json_response(UNHEALTHY, 503)
        if request.method == "POST" and request.path in _PROTECTED:
            return json_response(loading.to_json(), loading.status, {"Retry-After": loading.retry_after})
    key = emu.settings.api_key
    if key is not None and request.method == "POST" and request.path in _PROTECTED:
        got = request.headers.get("Authorization", "")
        if got.lower() != f"bearer {key}".lower():
            return web.Response(status=401)
    if request.content_length is not None and request.content_length > emu.settings.payload_limit:
        return web.Response(status=413, text=_PAYLOAD_TOO_LARGE, content_type="text/plain")
    try:
        return await handler(request)
    except BodyRejectionError as exc:
        return web.Response(status=exc.status, text=exc.text, content_type="text/plain")
    except InferError as exc:
        return json_response(exc.to_json(), exc.status)
    except openai_api.JsonError as exc:
        return json_response(exc.payload, exc.status)
    except web.HTTPNotFound:
        return web.Response(status=404)  # axum's fallback: empty 404
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405)


# --- TGI native routes ---
async def generate(request: web.Request) -> web.StreamResponse:
    gen = parse_generate_request(await read_json(request))
    headers, body = await _emu(request).generate(gen)
    return json_response(body, headers=headers)


async def _stream_chunks(emu: Emulator, items: AsyncGenerator[Any, None]) -> AsyncIterator[bytes]:
    try:
        async for item in items:
            yield sse.event(item.to_json() if isinstance(item, InferError) else item)
    finally:
        await items.aclose()


async def generate_stream(request: web.Request) -> web.StreamResponse:
    emu = _emu(request)
    gen = parse_generate_request(await read_json(request))
    return await sse.respond(request, emu.stream_headers(gen), _stream_chunks(emu, emu.generate_stream(gen)))


async def _compat(request: web.Request, body: Any) -> web.StreamResponse:
    """`POST /`: `{inputs, parameters, stream}`; return_full_text defaults from the pipeline tag."""
    emu = _emu(request)
    gen = parse_generate_request(body)
    if gen.parameters.return_full_text is None:
        tag = emu.settings.model_pipeline_tag
        gen.parameters.return_full_text = tag is None or tag == "text-generation"
    if isinstance(body, dict) and body.get("stream"):
        return await sse.respond(
            request, emu.stream_headers(gen), _stream_chunks(emu, emu.generate_stream(gen))
        )
    headers, out = await emu.generate(gen)
    return json_response([out], headers=headers)


async def compat_generate(request: web.Request) -> web.StreamResponse:
    return await _compat(request, await read_json(request))


async def invocations(request: web.Request) -> web.StreamResponse:
    """SageMaker's untagged Generate | Chat | Completion request."""
    body = await read_json(request)
    emu = _emu(request)
    if isinstance(body, dict) and "messages" in body:
        return await openai_api.chat_completions(emu, request, body)
    if isinstance(body, dict) and "prompt" in body:
        return await openai_api.completions(emu, request, body)
    return await _compat(request, body)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await openai_api.chat_completions(_emu(request), request, await read_json(request))


async def completions(request: web.Request) -> web.StreamResponse:
    return await openai_api.completions(_emu(request), request, await read_json(request))


async def tokenize(request: web.Request) -> web.StreamResponse:
    emu = _emu(request)
    gen = parse_generate_request(await read_json(request))
    spans = emu.tokenizer.encode(gen.inputs)
    return json_response([{"id": t.id, "text": t.text, "start": t.start, "stop": t.stop} for t in spans])


async def health(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200)


async def info(request: web.Request) -> web.StreamResponse:
    return json_response(_emu(request).info)


async def models(request: web.Request) -> web.StreamResponse:
    model_id = _emu(request).settings.model_id
    return json_response(
        {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": model_id}]}
    )


async def metrics(request: web.Request) -> web.StreamResponse:
    return web.Response(text=_emu(request).metrics.render(), content_type="text/plain")


def build_app(settings: EmulatorSettings, clock: Clock | None = None) -> web.Application:
    """An independent emulated server (TGI, or vLLM / SGLang: `settings.engine`); its scheduler task
    runs while the app is running."""
    from tgipool.emulator import openai_server  # it builds on this module

    emulator = Emulator(settings, clock)
    native = emulator.dialect is None
    middleware = tgi_middleware if native else openai_server.engine_middleware
    app = web.Application(middlewares=[middleware], client_max_size=emulator.settings.payload_limit)
    app[EMULATOR_KEY] = emulator

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        emulator.start()
        yield
        await emulator.stop()

    app.cleanup_ctx.append(lifecycle)
    if not native:
        openai_server.add_routes(app, emulator.settings.engine)
        return app
    posts: dict[str, Handler] = {
        "/": compat_generate,
        "/generate": generate,
        "/generate_stream": generate_stream,
        "/v1/chat/completions": chat_completions,
        "/v1/completions": completions,
        "/invocations": invocations,
        "/tokenize": tokenize,
    }
    gets: dict[str, Handler] = {
        "/": health,
        "/health": health,
        "/ping": health,
        "/info": info,
        "/metrics": metrics,
        "/v1/models": models,
    }
    for path, handler in posts.items():
        app.router.add_post(path, handler, expect_handler=expect_continue)
    for path, handler in gets.items():
        app.router.add_get(path, handler, expect_handler=expect_continue)

    async def fallback(request: web.Request) -> web.StreamResponse:
        """axum's answers for other paths (empty 404) and other methods (empty 405)."""
        return web.Response(status=405 if request.path in posts or request.path in gets else 404)

    app.router.add_route("*", "/{tail:.*}", fallback, expect_handler=expect_continue)
    return app


async def expect_continue(request: web.Request) -> None:
    """hyper's `Expect`: `100-continue` is answered, any other expectation ignored (never a 417 or 500)."""
    if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0

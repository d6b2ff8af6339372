"""Hostile and clumsy HTTP for the fuzz tests: a raw-socket client (any bytes in any header) and hypothesis
strategies for request bodies and headers of every route, shared by the gateway's and the emulator's tests.

Runs are bounded and reproducible: `FUZZ` settings (a few hundred examples, derandomized, no deadline).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


async def raw_request(
    url: str, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes, timeout: float = 20
) -> RawResponse:
    """One request on its own connection (`Connection: close`), headers sent exactly as given."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode()
        head += f"Content-Length: {len(body)}\r\n".encode()
        head += b"".join(k + b": " + v + b"\r\n" for k, v in headers)
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    while data.startswith(b"HTTP/1.1 1"):  # an interim answer (100 Continue): the real one follows
        data = data.partition(b"\r\n\r\n")[2]
    status_line, _, rest = data.partition(b"\r\n")
    raw_headers, _, payload = rest.partition(b"\r\n\r\n")
    parsed: dict[str, str] = {}
    for line in raw_headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        parsed[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    if parsed.get("transfer-encoding") == "chunked":
        payload = _dechunk(payload)
    return RawResponse(int(status_line.split()[1]), parsed, payload)


# --- bodies ---
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 1, 2, 3, 2**32 - 1, 2**32, 2**64, -(2**31)])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
ANY_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
# Small valid counts mostly, so the emulated backends answer fast; any JSON value sometimes.
_COUNT = st.integers(min_value=-3, max_value=6) | ANY_JSON
_TEXT = st.text(max_size=40) | ANY_JSON
_MODEL = st.sampled_from(["llama3-8b-ru", "code-7b", "tgi", "gpt-4o", ""]) | ANY_JSON


def _maybe(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


_PARAMETERS = _maybe(
    {
        "max_new_tokens": _COUNT,
        "best_of": _COUNT,
        "temperature": _SCALARS,
        "top_p": _SCALARS,
        "top_k": _COUNT,
        "stop": st.lists(st.text(max_size=4), max_size=5) | ANY_JSON,
        "truncate": _COUNT,
        "details": st.booleans() | ANY_JSON,
        "do_sample": st.booleans() | ANY_JSON,
        "grammar": ANY_JSON,
        "seed": _COUNT,
        "top_n_tokens": _COUNT,
        "decoder_input_details": st.booleans(),
        "adapter_id": _TEXT,
    }
)
TGI_BODY = _maybe({"inputs": _TEXT, "parameters": _PARAMETERS | ANY_JSON, "stream": st.booleans() | ANY_JSON})
_MESSAGE = _maybe(
    {
        "role": st.sampled_from(["user", "system", "assistant"]) | ANY_JSON,
        "content": _TEXT | st.lists(_maybe({"type": st.just("text") | _TEXT, "text": _TEXT}), max_size=2),
    }
)
CHAT_BODY = _maybe(
    {
        "model": _MODEL,
        "messages": st.lists(_MESSAGE, max_size=3) | ANY_JSON,
        "max_tokens": _COUNT,
        "max_completion_tokens": _COUNT,
        "n": _COUNT,
        "stream": st.booleans(),
        "stream_options": _maybe({"include_usage": st.booleans()}) | ANY_JSON,
        "temperature": _SCALARS,
        "presence_penalty": _SCALARS,
        "response_format": ANY_JSON,
        "logprobs": _SCALARS,
        "top_logprobs": _COUNT,
        "stop": _TEXT,
    }
)
COMPLETION_BODY = _maybe(
    {
        "model": _MODEL,
        "prompt": _TEXT | st.lists(_TEXT, max_size=5),
        "max_tokens": _COUNT,
        "n": _COUNT,
        "best_of": _COUNT,
        "suffix": _TEXT,
        "stream": st.booleans(),
        "temperature": _SCALARS,
    }
)
# Requests a client means to be right, with a few fields drawn anyhow: most reach a backend.
_SMALL = st.integers(min_value=1, max_value=8)
GOOD_TGI = st.fixed_dictionaries(
    {
        "inputs": st.text(min_size=1, max_size=30),
        "parameters": st.fixed_dictionaries({"max_new_tokens": _SMALL}),
    },
    optional={"stream": st.booleans()},
)
GOOD_CHAT = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=30)}),
            min_size=1,
            max_size=2,
        ),
        "max_tokens": _SMALL,
    },
    optional={"model": _MODEL, "stream": st.booleans(), "n": _COUNT, "max_completion_tokens": _COUNT},
)
GOOD_COMPLETION = st.fixed_dictionaries(
    {
        "prompt": st.text(max_size=30) | st.lists(st.text(max_size=10), min_size=1, max_size=4),
        "max_tokens": _SMALL,
    },
    optional={"model": _MODEL, "stream": st.booleans(), "best_of": _COUNT},
)
BODIES = {
    "/generate": GOOD_TGI | TGI_BODY,
    "/generate_stream": GOOD_TGI | TGI_BODY,
    "/": GOOD_TGI | TGI_BODY,
    "/v1/chat/completions": GOOD_CHAT | CHAT_BODY,
    "/v1/completions": GOOD_COMPLETION | COMPLETION_BODY,
}


@st.composite
def body_bytes(draw: st.DrawFn, route: str) -> bytes:
    """A body for `route`: mostly JSON of roughly the right shape, sometimes damaged the ways parsers trip."""
    raw = json.dumps(draw(BODIES[route])).encode()
    damage = draw(
        st.sampled_from(
            ["none"] * 16
            + ["nested", "surrogate", "huge_float", "nan", "bad_utf8", "truncated", "not_object", "utf16"]
        )
    )
    if damage == "nested":
        depth = draw(st.sampled_from([129, 1000, 50_000]))
        return b'{"inputs":' + b"[" * depth + b"]" * depth + b"}"
    if damage == "surrogate":
        return b'{"inputs":"a\\ud800b","messages":[{"role":"user","content":"\\udfff"}],"prompt":"\\ud83d"}'
    if damage == "huge_float":
        return b'{"inputs":"hi","parameters":{"temperature":1e400},"temperature":-1e999,"max_tokens":1e400}'
    if damage == "nan":
        return b'{"inputs":"hi","parameters":{"top_p":NaN},"temperature":Infinity}'
    if damage == "bad_utf8":
        return raw[: len(raw) // 2] + b"\xff\xfe\xc3" + raw[len(raw) // 2 :]
    if damage == "truncated":
        return raw[: max(0, len(raw) - draw(st.integers(1, 5)))]
    if damage == "not_object":
        return json.dumps(draw(ANY_JSON)).encode()
    if damage == "utf16":
        return raw.decode().encode("utf-16")
    return raw


# --- headers ---
# Any byte an HTTP parser lets through to the application (visible ASCII, space, tab, and 0x80-0xFF, so
# values that are not UTF-8); control characters are the parser's own 400 (see the malformed-line tests).
_HEADER_VALUE = st.binary(max_size=20).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c != 127) or b"x"
) | st.sampled_from([b"\xff\xfe", b"Bearer \xff", b"100-continue", b"bogus", b"gzip", b"close, cookie"])


@st.composite
def header_lists(draw: st.DrawFn, key: str | None = None) -> list[tuple[bytes, bytes]]:
    """Content-Type (mostly JSON) plus a few of the headers the gateway reads, with any bytes."""
    ctype = draw(
        st.sampled_from([b"application/json"] * 12 + [b"text/plain", b"application/x+json", b"\xff", b""])
    )
    headers = [(b"Content-Type", ctype)] if ctype else []
    names = [
        b"Authorization",
        b"Expect",
        b"X-Model",
        b"X-Priority",
        b"Connection",
        b"Cookie",
        b"X-Forwarded-For",
    ]
    if draw(st.integers(0, 3)) == 3:  # about a quarter of the requests carry odd headers
        for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
            headers.append((name, draw(_HEADER_VALUE)))
    if key is not None and not any(n == b"Authorization" for n, _ in headers) and draw(st.integers(0, 5)) < 5:
        headers.append((b"Authorization", b"Bearer " + key.encode()))
    return headers

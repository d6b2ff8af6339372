"""Every validation rule, its order, the 429/413/415/400 paths and in-stream errors, checked over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from .conftest import ThreadedEmulator

V = "Input validation error: "


def post(emu: ThreadedEmulator, path: str, body: Any, **kw: Any) -> requests.Response:
    return requests.post(emu.url + path, json=body, timeout=10, **kw)


def sse_events(resp: requests.Response) -> list[Any]:
    assert resp.headers["content-type"].startswith("text/event-stream")
    out = []
    for block in resp.text.split("\n\n"):
        if block.startswith("data:"):
            data = block[len("data:") :]
            out.append("[DONE]" if data.strip() == "[DONE]" else json.loads(data))
    return out


RULES: list[tuple[str, dict[str, Any], str]] = [
    ("hi", {"best_of": 2}, "you must use sampling when `best_of` is > 1"),
    ("hi", {"temperature": 0}, "`temperature` must be strictly positive"),
    ("hi", {"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
    ("hi", {"frequency_penalty": 2.5}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ("hi", {"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
    ("hi", {"top_p": 0}, "`top_p` must be > 0.0 and < 1.0"),
    ("hi", {"typical_p": 1.0}, "`typical_p` must be > 0.0 and < 1.0"),
    ("hi", {"top_k": 0}, "`top_k` must be strictly positive"),
    ("hi", {"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
    ("hi", {"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
    ("hi", {"best_of": 2, "do_sample": True, "seed": 1}, "`seed` must not be set when `best_of` > 1"),
    ("hi", {"best_of": 3, "do_sample": True}, "`best_of` must be > 0 and <= 2. Given: 3"),
    ("hi", {"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    ("", {}, "`inputs` cannot be empty"),
    ("hi", {"truncate": 0}, "`truncate` must be strictly positive and less than 511. Given: 0"),
    ("hi", {"truncate": 600}, "`truncate` must be strictly positive and less than 511. Given: 600"),
    (
        "hi",
        {"max_new_tokens": 512},
        "`inputs` tokens + `max_new_tokens` must be <= 512. "
        "Given: 1 `inputs` tokens and 512 `max_new_tokens`",
    ),
    ("a " * 600, {"max_new_tokens": 1}, "`inputs` tokens + `max_new_tokens` must be <= 512"),
    ("hi", {"grammar": {"type": "json", "value": "{"}}, "grammar is not valid: "),
    (
        "hi",
        {"grammar": {"type": "json", "value": {"type": "object"}}},
        "grammar is not valid: Grammar must have",
    ),
]


@pytest.mark.parametrize(("inputs", "params", "message"), RULES)
def test_validation_rules(
    shared_emulator: ThreadedEmulator, inputs: str, params: dict[str, Any], message: str
) -> None:
    resp = post(shared_emulator, "/generate", {"inputs": inputs, "parameters": params})
    assert resp.status_code == 422
    body = resp.json()
    assert body["error_type"] == "validation"
    assert body["error"].startswith(V + message)


def test_input_length_limit(emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    emu = emulator_factory(max_input_tokens=10, max_total_tokens=100)
    resp = post(emu, "/generate", {"inputs": " a" * 20, "parameters": {"max_new_tokens": 1}})
    assert resp.json()["error"] == V + "`inputs` must have less than 10 tokens. Given: 20"
    # truncate keeps the last tokens and makes the same prompt valid
    ok = post(emu, "/generate", {"inputs": " a" * 20, "parameters": {"max_new_tokens": 1, "truncate": 10}})
    assert ok.status_code == 200 and ok.headers["x-prompt-tokens"] == "10"


def test_validation_order_first_failure_wins(shared_emulator: ThreadedEmulator) -> None:
    params = {"temperature": -1, "top_k": 0, "max_new_tokens": 0, "stop": ["x"] * 9}
    resp = post(shared_emulator, "/generate", {"inputs": "", "parameters": params})
    assert resp.json()["error"] == V + "`temperature` must be strictly positive"
    params = {"top_k": 0, "top_p": 2.0}
    assert post(shared_emulator, "/generate", {"inputs": "x", "parameters": params}).json()["error"] == (
        V + "`top_p` must be > 0.0 and < 1.0"
    )


def test_default_max_new_tokens_fills_context(emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    emu = emulator_factory(max_total_tokens=40)
    resp = post(emu, "/generate", {"inputs": "one two three", "parameters": {}})
    assert resp.status_code == 200
    assert int(resp.headers["x-prompt-tokens"]) + int(resp.headers["x-generated-tokens"]) == 40


def test_generate_headers(shared_emulator: ThreadedEmulator) -> None:
    resp = post(shared_emulator, "/generate", {"inputs": "Hello world", "parameters": {"max_new_tokens": 3}})
    h = resp.headers
    for name in ("x-total-time", "x-validation-time", "x-queue-time", "x-inference-time", "x-time-per-token"):
        assert h[name].isdigit()
    float(h["x-compute-time"])
    assert h["x-compute-type"] == "gpu+optimized"
    assert h["x-compute-characters"] == "11"
    assert (h["x-prompt-tokens"], h["x-generated-tokens"]) == ("4", "3")  # Hell|o| worl|d
    assert resp.json() == {"generated_text": resp.json()["generated_text"]}  # no details unless asked


def test_overloaded_before_validation(emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    emu = emulator_factory(max_concurrent_requests=0)
    resp = post(emu, "/generate", {"inputs": "", "parameters": {"temperature": 0}})  # invalid, yet 429
    assert resp.status_code == 429
    assert resp.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
    stream = post(emu, "/generate_stream", {"inputs": "hi"})
    assert stream.status_code == 200
    assert sse_events(stream) == [{"error": "Model is overloaded", "error_type": "overloaded"}]
    metrics = requests.get(emu.url + "/metrics", timeout=5).text
    assert 'tgi_request_failure{err="overloaded"} 2' in metrics


def test_permits_are_returned(emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    emu = emulator_factory(max_concurrent_requests=1)
    for _ in range(3):
        assert (
            post(emu, "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 2}}).status_code == 200
        )
        assert post(emu, "/generate", {"inputs": "hi", "parameters": {"top_k": 0}}).status_code == 422
        assert post(emu, "/generate_stream", {"inputs": "hi", "parameters": {"max_new_tokens": 2}}).ok


def test_stream_errors_are_events_on_200(shared_emulator: ThreadedEmulator) -> None:
    resp = post(shared_emulator, "/generate_stream", {"inputs": "hi", "parameters": {"top_k": -1}})
    assert resp.status_code == 200 and resp.headers["x-accel-buffering"] == "no"
    assert sse_events(resp) == [
        {"error": V + "`top_k` must be strictly positive", "error_type": "validation"}
    ]
    resp = post(shared_emulator, "/generate_stream", {"inputs": "hi", "parameters": {"best_of": 2}})
    assert sse_events(resp)[0]["error"] == V + "`best_of` != 1 is not supported when streaming tokens"
    resp = post(
        shared_emulator, "/generate_stream", {"inputs": "hi", "parameters": {"decoder_input_details": True}}
    )
    assert sse_events(resp)[0]["error"] == (
        V + "`decoder_input_details` == true is not supported when streaming tokens"
    )


def test_stream_framing(shared_emulator: ThreadedEmulator) -> None:
    resp = post(shared_emulator, "/generate_stream", {"inputs": "hi", "parameters": {"max_new_tokens": 2}})
    assert resp.text.startswith('data:{"index":1,"token":{')
    events = sse_events(resp)
    assert [e["index"] for e in events] == [1, 2]
    assert events[0]["generated_text"] is None and events[1]["details"] is None  # details not requested
    compat = post(shared_emulator, "/", {"inputs": "hi", "parameters": {"max_new_tokens": 2}, "stream": True})
    assert len(sse_events(compat)) == 2
    listed = post(shared_emulator, "/", {"inputs": "hi", "parameters": {"max_new_tokens": 2}})
    assert isinstance(listed.json(), list) and listed.json()[0]["generated_text"].startswith("hi")


def test_chat_stream_error_shape(shared_emulator: ThreadedEmulator) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "stream": True, "max_tokens": 5000}
    events = sse_events(post(shared_emulator, "/v1/chat/completions", body))
    assert events[-1] == "[DONE]"
    assert events[0]["error"]["http_status_code"] == 422
    assert events[0]["error"]["message"].startswith(V + "`inputs` tokens + `max_new_tokens` must be <= 512")
    ok = post(shared_emulator, "/v1/chat/completions", {**body, "max_tokens": 2})
    assert ok.text.endswith("data: [DONE]\n\n")


def test_completions_errors(shared_emulator: ThreadedEmulator) -> None:
    resp = post(shared_emulator, "/v1/completions", {"prompt": ["a"] * 5, "max_tokens": 1})
    assert resp.status_code == 422 and resp.json()["error_type"] == "batch size exceeded"
    resp = post(shared_emulator, "/v1/completions", {"prompt": "a", "suffix": "b"})
    assert resp.status_code == 422 and resp.json()["error_type"] == "suffix not supported"


def test_body_rejections(emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    emu = emulator_factory(payload_limit=1000)
    big = requests.post(emu.url + "/generate", json={"inputs": "x" * 2000}, timeout=5)
    assert big.status_code == 413 and big.text == "Failed to buffer the request body: length limit exceeded"
    assert big.headers["content-type"].startswith("text/plain")
    bad_type = requests.post(emu.url + "/generate", data="{}", timeout=5)
    assert bad_type.status_code == 415
    bad_json = requests.post(
        emu.url + "/generate", data="{", headers={"content-type": "application/json"}, timeout=5
    )
    assert bad_json.status_code == 400 and bad_json.text.startswith(
        "Failed to parse the request body as JSON"
    )
    wrong = post(emu, "/generate", {"inputs": "x", "parameters": {"max_new_tokens": "5"}})
    assert wrong.status_code == 422
    assert wrong.text.startswith(
        "Failed to deserialize the JSON body into the target type: parameters.max_new_tokens"
    )
    assert post(emu, "/generate", {"parameters": {}}).text.endswith("missing field `inputs`")


def test_api_key(emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    emu = emulator_factory(api_key="s3cret")
    assert post(emu, "/generate", {"inputs": "x"}).status_code == 401
    auth = {"Authorization": "bearer S3CRET"}
    assert post(emu, "/generate", {"inputs": "x", "parameters": {"max_new_tokens": 1}}, headers=auth).ok
    assert requests.get(emu.url + "/health", timeout=5).status_code == 200


def test_small_endpoints(shared_emulator: ThreadedEmulator) -> None:
    base = shared_emulator.url
    health = requests.get(base + "/health", timeout=5)
    assert health.status_code == 200 and health.content == b""
    assert requests.get(base + "/", timeout=5).status_code == 200
    info = requests.get(base + "/info", timeout=5).json()
    assert info["version"] == "3.3.6-dev0" and info["router"] == "text-generation-router"
    assert (info["max_input_tokens"], info["max_total_tokens"], info["max_concurrent_requests"]) == (
        511,
        512,
        128,
    )
    models = requests.get(base + "/v1/models", timeout=5).json()
    assert models["data"][0]["owned_by"] == info["model_id"]
    toks = post(shared_emulator, "/tokenize", {"inputs": "Hello, tokenization!"}).json()
    assert [t["text"] for t in toks] == ["Hell", "o", ",", " toke", "niza", "tion", "!"]
    assert toks[3]["start"] == 6 and toks[3]["stop"] == 11
    assert requests.get(base + "/nope", timeout=5).status_code == 404


def test_client_disconnect_frees_permit_and_batch_slot(
    emulator_factory: Callable[..., ThreadedEmulator],
) -> None:
    emu = emulator_factory(max_concurrent_requests=1, decode_step_ms=5.0)
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 400}}
    with requests.post(emu.url + "/generate_stream", json=body, stream=True, timeout=10) as resp:
        first = next(resp.iter_lines())
        assert first.startswith(b"data:{")
    # The 2 s stream was abandoned after one token; its permit must come back quickly.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        ok = post(emu, "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 1}})
        if ok.status_code == 200:
            break
        time.sleep(0.02)
    assert ok.status_code == 200
    assert emu.server.emulator.scheduler.batch_size == 0

"""`tgipool emulate --engine vllm|sglang`: each engine's routes, errors and metric names, on loopback
servers with real clients (the openai SDK, requests), and the sim picking the engine from the pod label."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tgipool.emulator import EmulatorSettings
from tgipool.emulator.sim import settings_for_pod
from tgipool.monitoring.engine_metrics import exported

from .conftest import ThreadedEmulator

ENGINES = ["vllm", "sglang"]


def families(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


@pytest.mark.parametrize("engine", ENGINES)
def test_openai_routes_with_the_sdk(engine: str, emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    emu = emulator_factory(engine=engine, model_id="org/model", served_model_name="chat")
    client = openai.OpenAI(base_url=emu.url + "/v1", api_key="none", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["chat"]
    chat = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hello"}], max_tokens=4
    )
    assert chat.model == "chat" and chat.id.startswith("chatcmpl-") and chat.usage is not None
    assert chat.usage.completion_tokens == 4 and chat.choices[0].finish_reason == "length"
    text = client.completions.create(model="chat", prompt="once upon", max_tokens=3)
    assert text.id.startswith("cmpl-") and text.usage is not None and text.usage.completion_tokens == 3
    chunks = list(
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("engine", ENGINES)
def test_tgi_routes_are_not_there(engine: str, emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    emu = emulator_factory(engine=engine)
    for path in ("/generate", "/generate_stream"):
        r = requests.post(emu.url + path, json={"inputs": "hi"}, timeout=5)
        assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})
    assert requests.get(emu.url + "/info", timeout=5).status_code == 404
    assert requests.get(emu.url + "/health", timeout=5).status_code == 200


def test_vllm_extra_routes_and_errors(emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    emu = emulator_factory(engine="vllm", engine_version="0.11.0", served_model_name="chat")
    assert requests.get(emu.url + "/version", timeout=5).json() == {"version": "0.11.0"}
    assert requests.get(emu.url + "/ping", timeout=5).status_code == 200
    assert requests.post(emu.url + "/ping", timeout=5).status_code == 200
    tok = requests.post(
        emu.url + "/tokenize", json={"model": "chat", "prompt": "hello world"}, timeout=5
    ).json()
    assert tok["count"] == len(tok["tokens"]) > 0 and tok["max_model_len"] == 512
    back = requests.post(emu.url + "/detokenize", json={"model": "chat", "tokens": tok["tokens"]}, timeout=5)
    assert back.json() == {"prompt": "hello world"}
    # vLLM's error shape: nested, typed, with the status as code.
    r = requests.post(
        emu.url + "/v1/chat/completions", json={"model": "other", "messages": [], "max_tokens": 2}, timeout=5
    )
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "The model `other` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
    }
    r = requests.post(emu.url + "/v1/completions", json={"model": "chat", "prompt": "x" * 4000}, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
    r = requests.post(
        emu.url + "/v1/completions", data=b"{", headers={"Content-Type": "application/json"}, timeout=5
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == 400
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=emu.url + "/v1", api_key="x", max_retries=0).completions.create(
            model="nope", prompt="a", max_tokens=1
        )


def test_sglang_routes_and_errors(emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    emu = emulator_factory(engine="sglang", model_id="org/model")
    assert requests.get(emu.url + "/health_generate", timeout=5).status_code == 200
    info = requests.get(emu.url + "/get_model_info", timeout=5).json()
    assert info == {"model_path": "org/model", "tokenizer_path": "org/model", "is_generation": True}
    assert requests.post(emu.url + "/tokenize", json={"prompt": "a"}, timeout=5).status_code == 404
    # SGLang's flat error shape; it does not check `model`.
    r = requests.post(emu.url + "/v1/completions", json={"model": "any", "prompt": "x" * 4000}, timeout=5)
    body = r.json()
    assert r.status_code == 400 and body["object"] == "error" and body["code"] == 400
    ok = requests.post(
        emu.url + "/v1/completions", json={"model": "any", "prompt": "hi", "max_tokens": 2}, timeout=5
    )
    assert ok.status_code == 200 and ok.json()["model"] == "org/model"


@pytest.mark.parametrize("engine", ENGINES)
def test_metric_names_and_types_come_from_the_table(
    engine: str, emulator_factory: Callable[..., ThreadedEmulator]
) -> None:
    emu = emulator_factory(engine=engine, max_batch_size=1, decode_step_ms=5.0)
    requests.post(emu.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 5}, timeout=10)
    text = requests.get(emu.url + "/metrics", timeout=5).text
    got = families(text)
    assert "tgi_" not in text and "_created" not in text
    for row in exported(engine):  # type: ignore[arg-type]
        family = row.name.removesuffix("_total") if row.kind == "counter" else row.name
        assert got.get(family) == row.kind, (row.name, got)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    generated = next(v for (n, _), v in samples.items() if n.endswith(":generation_tokens_total"))
    assert generated == 5
    ttft = next(v for (n, _), v in samples.items() if n.endswith(":time_to_first_token_seconds_count"))
    assert ttft == 1


def test_vllm_version_picks_the_kv_name(emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    old = families(
        requests.get(emulator_factory(engine="vllm", engine_version="0.9.2").url + "/metrics", timeout=5).text
    )
    new = families(requests.get(emulator_factory(engine="vllm").url + "/metrics", timeout=5).text)
    assert "vllm:gpu_cache_usage_perc" in old and "vllm:kv_cache_usage_perc" not in old
    assert "vllm:kv_cache_usage_perc" in new and "vllm:gpu_cache_usage_perc" not in new
    assert "vllm:time_per_output_token_seconds" in old and "vllm:inter_token_latency_seconds" in new


def test_queue_gauge_counts_waiting_requests(emulator_factory: Callable[..., ThreadedEmulator]) -> None:
    """The HPA's signal: with batches of 1 and slow decode, concurrent requests wait in the queue."""
    import concurrent.futures

    emu = emulator_factory(engine="vllm", max_batch_size=1, decode_step_ms=50.0)
    body = {"prompt": "hi", "max_tokens": 10}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(requests.post, emu.url + "/v1/completions", json=body, timeout=30) for _ in range(4)
        ]
        waiting = 0.0
        for _ in range(40):
            text = requests.get(emu.url + "/metrics", timeout=5).text
            waiting = max(
                s.value
                for f in text_string_to_metric_families(text)
                if f.name == "vllm:num_requests_waiting"
                for s in f.samples
            )
            if waiting >= 2:
                break
            import time

            time.sleep(0.05)
        assert waiting >= 2
        assert all(f.result().status_code == 200 for f in futures)


def _pod(engine: str | None, args: list[str]) -> dict[str, Any]:
    labels = {"tgipool.io/pool": "p"} | ({"tgipool.io/engine": engine} if engine else {})
    return {
        "metadata": {"name": "p-0", "namespace": "ml", "labels": labels},
        "spec": {
            "containers": [
                {"name": "server", "args": args, "ports": [{"name": "http", "containerPort": 8000}]}
            ]
        },
        "status": {"phase": "Running", "podIP": "127.0.0.9"},
    }


def test_sim_emulates_the_engine_of_the_pod_label() -> None:
    base = EmulatorSettings()
    vllm = settings_for_pod(
        _pod(
            "vllm",
            ["serve", "org/m", "--served-model-name", "chat", "--max-model-len=2048", "--max-num-seqs", "8"],
        ),
        base,
    )
    assert vllm is not None
    assert (
        vllm.engine,
        vllm.model_id,
        vllm.model_name,
        vllm.max_total_tokens,
        vllm.max_batch_size,
        vllm.port,
    ) == (
        "vllm",
        "org/m",
        "chat",
        2048,
        8,
        8000,
    )
    sglang = settings_for_pod(
        _pod(
            "sglang",
            ["--model-path=org/s", "--port=30000", "--context-length=1024", "--max-running-requests=4"],
        ),
        base,
    )
    assert sglang is not None
    assert (sglang.engine, sglang.model_id, sglang.max_total_tokens, sglang.max_batch_size, sglang.port) == (
        "sglang",
        "org/s",
        1024,
        4,
        30000,
    )
    # Until an engine's builder lands its pods carry TGI's flags: read as such (with the engine's own
    # flags from extraArgs where TGI has none), served as the label says.
    args = [
        "--model-id=org/t",
        "--max-total-tokens=900",
        "--port=8080",
        "--max-num-seqs=2",
        "--served-model-name=x",
    ]
    interim = settings_for_pod(_pod("vllm", args), base)
    assert interim is not None
    got = (
        interim.engine,
        interim.model_id,
        interim.model_name,
        interim.max_total_tokens,
        interim.max_batch_size,
    )
    assert (got, interim.port) == (("vllm", "org/t", "x", 900, 2), 8080)
    tgi = settings_for_pod(_pod(None, ["--model-id=org/t"]), base)
    assert tgi is not None and tgi.engine == "tgi"

"""The compiled core itself (`tgipool-gateway-core`, real binary): it counts tokens as the emulator does,
what it serves reaches the gateway's /metrics and the pools' demand, a client cannot reach Python's side
of the link through it, `tgipool gateway --core` runs it and never leaves it behind, and a reloaded
`clientTimeoutSeconds` reaches the core's header timeout without a restart."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tgipool import approx_tokens
from tgipool.gateway.cli import resolve_core
from tgipool.gateway.wake import Demand

from .conftest import CORE_ENV, free_port, stack, wait_until
from .core_binary import core_binary
from .test_gateway_wake import Recorder

# Characters of every class the approximation tells apart: ASCII letters, digits and symbols, Unicode
# letters (Latin, Cyrillic, CJK, Arabic), other numerics (², Ⅻ), combining marks, every whitespace Python
# knows (\x1c-\x1f, \x85, NBSP, the U+2000 spaces), underscores and emoji.
ALPHABET = (
    "abcXYZ019_ ,.!?-'\"\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2007\u200a\u2028\u2029\u202f"
    "\u205f\u3000\u00e9\u00df\u041f\u0440\u0438\u0432\u0435\u0442\u4e2d\u6587\u0627\u0628"
    "\u00b2\u00b3\u216b\u0663\u0301\u200b\U0001f600\U0001f680"
)


def test_the_core_counts_tokens_as_the_emulator_and_the_gateway_do() -> None:
    rng = random.Random(14)
    texts = ["", " ", "Hello, tokenization!", "word" + " word" * 300]
    texts += ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 60))) for _ in range(3000)]
    out = subprocess.run(
        [core_binary(), "--count-tokens"],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout)
    wrong = [
        (t, c, approx_tokens.count(t))
        for t, c in zip(texts, counts, strict=True)
        if c != approx_tokens.count(t)
    ]
    assert not wrong, wrong[:5]


BACKENDS = {"a": {"model_id": "llama", "max_input_tokens": 1000, "max_total_tokens": 2000}}


def warm_config(urls: dict[str, str]) -> dict[str, Any]:
    return {
        "pools": [
            {
                "name": "warm",
                "servedName": "llama",
                "maxInputTokens": 1000,
                "maxTotalTokens": 2000,
                "endpoints": [urls["a"]],
                "holdSeconds": 5,
                "demandLease": "warm-demand",
            }
        ]
    }


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_what_the_core_serves_reaches_metrics_and_demand_and_clients_cannot_feed_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(CORE_ENV, core_binary())

    async def scenario() -> None:
        async with stack(BACKENDS, warm_config) as st:
            api = Recorder()
            st.gateway.gateway.demand = Demand(api, "ml", "gw-0")
            chat = {"model": "llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            for _ in range(5):
                status, headers, body = await st.post("/v1/chat/completions", chat)
                assert status == 200, body
                assert headers["X-TGIPool-Pool"] == "warm"  # spelled as the Python gateway spells it
            status, _, body = await st.post("/generate", {"inputs": "x" * 5000}, {"X-Model": "llama"})
            assert status == 422, body  # too long for every pool: the core hands it to Python, which says so
            # A client posting a report through the public port is refused and changes nothing.
            status, _, body = await st.post("/internal/core/report", {"routed": {"warm": 1000}})
            assert status == 404 and body["error_type"] == "not_found", body

            def routed() -> float:
                return st.metric("tgipool_gateway_routed_total", pool="warm")

            await wait_until(lambda: routed() == 5, "the core's report")
            async with st.session.get(st.url + "/metrics") as resp:  # through the core, from Python
                seen = samples(await resp.text())
            route = "/v1/chat/completions"
            assert seen["tgipool_gateway_requests_total", frozenset({("route", route), ("code", "200")})] == 5
            assert (
                seen["tgipool_gateway_requests_total", frozenset({("route", "/generate"), ("code", "422")})]
                == 1
            )
            for h in ("upstream_seconds", "request_seconds", "added_latency_seconds"):
                assert seen[f"tgipool_gateway_{h}_count", frozenset({("pool", "warm")})] == 5, h
            # The pool the core served keeps its demand Lease renewed (once: renewals are rate-limited).
            await wait_until(lambda: bool(api.calls), "the demand Lease patch")
            assert api.calls[0][0] == "/apis/coordination.k8s.io/v1/namespaces/ml/leases/warm-demand"
            await asyncio.sleep(0.2)
            assert routed() == 5

    asyncio.run(scenario())


def start_emulator() -> tuple[subprocess.Popen[bytes], str]:
    """A fast emulator serving `llama` on loopback, and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tgipool.emulator.cli", "emulate", "--hostname", "127.0.0.1",
         "--port", str(port := free_port()), "--model-id", "llama", "--decode-step-ms", "0"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def core_config(backend: str, **extra: Any) -> str:
    cfg = {"pools": [{"name": "p", "servedName": "llama", "maxInputTokens": 1000, "maxTotalTokens": 2000,
                      "endpoints": [backend]}], **extra}  # fmt: skip
    return json.dumps(cfg)


def gateway_with_core(tmp_path: Path, backend: str, **extra: Any) -> tuple[subprocess.Popen[str], int]:
    (tmp_path / "gateway.yaml").write_text(core_config(backend, **extra))
    port = free_port()
    args = ["--config", str(tmp_path / "gateway.yaml"), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tgipool.gateway.cli", "gateway", *args, "--core", core_binary()],
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, port


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def serve_once(port: int) -> int:
    """One completion through the gateway, once it listens (bounded)."""
    body = json.dumps({"model": "llama", "prompt": "hi", "max_tokens": 1}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", body, {"Content-Type": "application/json"}
    )
    for _ in range(200):
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return int(resp.status)
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the gateway never answered")


@pytest.mark.parametrize("how", ["sigterm", "python_killed"])
def test_the_gateway_runs_its_core_and_never_leaves_it_behind(tmp_path: Path, how: str) -> None:
    emulator, backend = start_emulator()
    proc, gw_port = gateway_with_core(tmp_path, backend)
    try:
        assert serve_once(gw_port) == 200
        (core,) = children(proc.pid)
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=15)
            assert proc.returncode == 0, stderr
        else:  # the gateway dies without a word: its core notices within seconds and stops
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=5)
        for _ in range(100):
            if not alive(core):
                break
            time.sleep(0.05)
        assert not alive(core)
    finally:
        for p in (proc, emulator):
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_core_auto_is_the_binary_on_path_else_python_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert resolve_core("/opt/x/tgipool-gateway-core") == "/opt/x/tgipool-gateway-core"  # a path as given
    assert resolve_core(None) is None
    core = tmp_path / "tgipool-gateway-core"
    core.write_text("#!/bin/sh\n")
    core.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert resolve_core("auto") == str(core)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert resolve_core("auto") is None
    assert "no tgipool-gateway-core on PATH" in caplog.text


def half_head_closed_within(port: int, seconds: float) -> bool:
    """A request head that never ends, sent to the gateway: closed by the server within `seconds`?"""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(seconds)
        try:
            return sock.recv(1024) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


def test_a_client_timeout_change_reaches_the_core_without_a_restart(tmp_path: Path) -> None:
    emulator, backend = start_emulator()
    proc, gw_port = gateway_with_core(tmp_path, backend, clientTimeoutSeconds=30)
    try:
        assert serve_once(gw_port) == 200
        assert not half_head_closed_within(gw_port, 1.5)  # 30 s to send a head
        (tmp_path / "gateway.yaml").write_text(core_config(backend, clientTimeoutSeconds=0.5))
        proc.send_signal(signal.SIGHUP)
        # The core has the new snapshot within milliseconds and starts its next connections under it
        # within a second; until then a head may still get 30 s.
        deadline = time.monotonic() + 10
        while not half_head_closed_within(gw_port, 2.0):
            assert time.monotonic() < deadline, "the core kept the old header timeout after the reload"
        assert serve_once(gw_port) == 200
    finally:
        for p in (proc, emulator):
            if p.poll() is None:
                p.kill()
                p.communicate()

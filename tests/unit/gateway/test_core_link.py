"""The link to the compiled core: snapshots by long poll, reports added into /metrics, and `--core`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tgipool.gateway import parse_config
from tgipool.gateway.routing import endpoint_id
from tgipool.gateway.wake import Demand

from .conftest import GatedBackend, Stack, free_port, serve_app, stack, wait_until
from .test_gateway_wake import Recorder

BACKENDS: dict[str, dict[str, Any]] = {
    "short-a": {"model_id": "llama"},
    "short-b": {"model_id": "llama"},
    "long-a": {"model_id": "llama", "max_concurrent_requests": 7},
}
HISTOGRAMS = (
    "queue_wait_seconds",
    "upstream_seconds",
    "ttft_seconds",
    "request_seconds",
    "added_latency_seconds",
)


def config(urls: dict[str, str], **overrides: Any) -> dict[str, Any]:
    """Two pools of one model: short (a configured limit, spills to long), long (its limit learned)."""
    cfg: dict[str, Any] = {
        "defaultPool": "short",
        "queueTimeoutSeconds": 3,
        "maxQueueLength": 50,
        "pools": [
            {
                "name": "short",
                "servedName": "llama",
                "maxInputTokens": 1024,
                "maxTotalTokens": 2048,
                "priority": 5,
                "fallbackPool": "long",
                "maxConcurrentRequests": 4,
                "endpoints": [urls["short-a"], urls["short-b"]],
            },
            {
                "name": "long",
                "servedName": "llama",
                "maxInputTokens": 8000,
                "maxTotalTokens": 8192,
                "overload": "cap",
                "capMaxNewTokens": 256,
                "endpoints": [urls["long-a"]],
            },
        ],
    }
    cfg.update(overrides)
    return cfg


async def learned(st: Stack) -> None:
    """Wait for long-a's limit from its /info (it moves the version: tests start after it)."""
    ep = st.gateway.gateway.table.endpoints[st.urls["long-a"]]
    await wait_until(lambda: ep.learned_limit is not None, "long-a's learned limit")


async def get_snapshot(st: Stack, after: int, wait: float | None = None) -> tuple[int, Any, float]:
    params = {"after": str(after)} if wait is None else {"after": str(after), "wait": str(wait)}
    t0 = time.monotonic()
    async with st.session.get(st.url + "/internal/core/snapshot", params=params) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw) if raw else None, time.monotonic() - t0


async def post_report(st: Stack, report: Any) -> tuple[int, Any]:
    async with st.session.post(st.url + "/internal/core/report", json=report) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw) if raw else None


async def scrape(st: Stack) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with st.session.get(st.url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return "tgipool_gateway_" + name, frozenset(labels.items())


def test_the_snapshot_describes_pools_endpoints_limits_and_the_metrics_buckets() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, config, core_link=True) as st:
            await learned(st)
            gw = st.gateway.gateway
            status, snap, took = await get_snapshot(st, 0)
            assert status == 200 and took < 1
            assert snap["version"] == gw.core.version >= 2  # the first table, then long-a's limit
            urls = st.urls

            def endpoint(name: str, limit: int) -> dict[str, Any]:
                return {"url": urls[name], "id": endpoint_id(urls[name]), "limit": limit}

            common = {"model": "llama", "environment": "prod", "spare": None, "tokenizer": None}
            tgi = {"engine": "tgi", "tgi_api": True, "upstream_model": "tgi"}
            tgi |= {"hold": False, "adapters": False}
            assert snap == {
                "version": snap["version"],
                "tenants": False,
                "default_pool": "short",
                "queue_timeout_seconds": 3.0,
                "max_queue_length": 50,
                "connect_timeout_seconds": 2.0,
                "response_timeout_seconds": 600.0,
                "stream_idle_timeout_seconds": 60.0,
                "client_timeout_seconds": 60.0,
                # The bounds prometheus_client buckets by, +Inf left out.
                "buckets": {
                    name: list(gw.metrics.histograms[name]._upper_bounds[:-1]) for name in HISTOGRAMS
                },
                "pools": [
                    {
                        "name": "short",
                        **common,
                        "input_limit": 1024,
                        "total_limit": 2048,
                        "priority": 5,
                        "fallback": "long",
                        "overload": "spill",
                        "cap": None,
                        **tgi,
                        "endpoints": [endpoint("short-a", 4), endpoint("short-b", 4)],
                    },
                    {
                        "name": "long",
                        **common,
                        "input_limit": 8000,
                        "total_limit": 8192,
                        "priority": 0,
                        "fallback": None,
                        "overload": "cap",
                        "cap": 256,
                        **tgi,
                        "endpoints": [endpoint("long-a", 7)],  # learned from its /info
                    },
                ],
            }
            assert snap["buckets"]["added_latency_seconds"] != snap["buckets"]["upstream_seconds"]
            assert all(ep["id"].startswith("ep-") for p in snap["pools"] for ep in p["endpoints"])

    asyncio.run(scenario())


def test_the_long_poll_waits_for_a_change_and_answers_at_once_when_one_comes() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, config, core_link=True) as st:
            await learned(st)
            gw = st.gateway.gateway
            v = gw.core.version
            status, snap, took = await get_snapshot(st, v, wait=0.3)
            assert (status, snap) == (204, None) and 0.3 <= took < 2
            status, snap, took = await get_snapshot(st, v - 1, wait=10)  # behind: at once
            assert status == 200 and snap["version"] == v and took < 1

            # A configuration applied while the core waits: the answer comes at once, with it.
            waiting = asyncio.create_task(get_snapshot(st, v, wait=10))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            tenants = [{"name": "team", "apiKey": "key-team-0123"}]
            cfg = config(st.urls, tenants=tenants, defaultPool="long")
            cfg["pools"][0]["endpoints"] = [st.urls["short-a"]]
            gw.apply(parse_config(cfg))
            status, snap, took = await waiting
            assert status == 200 and snap["version"] > v and took < 2
            assert snap["tenants"] is True and snap["default_pool"] == "long"
            assert [ep["url"] for ep in snap["pools"][0]["endpoints"]] == [st.urls["short-a"]]

            # A learned limit that changes moves the version; the same one again does not.
            v = snap["version"]
            ep = gw.table.endpoints[st.urls["long-a"]]
            waiting = asyncio.create_task(get_snapshot(st, v, wait=10))
            await asyncio.sleep(0.1)
            gw.table.set_learned_limit(ep, 99)
            status, snap, took = await waiting
            assert status == 200 and snap["version"] > v and took < 2
            assert snap["pools"][1]["endpoints"][0]["limit"] == 99
            gw.table.set_learned_limit(ep, 99)
            status, _, _ = await get_snapshot(st, snap["version"], wait=0.2)
            assert status == 204

    asyncio.run(scenario())


def test_a_reports_deltas_are_added_into_the_metrics() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, config, core_link=True) as st:
            await learned(st)
            gw = st.gateway.gateway
            status, _, _ = await st.generate("Hi", 2)  # one of Python's own: the core's add to it
            assert status == 200
            before = await scrape(st)
            assert before[key("requests_total", route="/generate", code="200")] == 1
            bounds = gw.metrics.bounds["upstream_seconds"]
            upstream = [0] * (len(bounds) + 1)
            upstream[1], upstream[2], upstream[-1] = 3, 2, 1
            added = [0] * (len(gw.metrics.bounds["added_latency_seconds"]) + 1)
            added[0] = 4
            report = {
                "requests": [
                    {"route": "/generate", "code": 200, "n": 5},
                    {"route": "/v1/chat/completions", "code": 429, "n": 2},
                ],
                "routed": {"short": 5},
                "fallbacks": [{"pool": "short", "fallback": "long", "n": 1}],
                "rejections": {"overloaded": 2},
                "retries": [{"pool": "short", "reason": "connect_error", "n": 1}],
                "queue_depth": {"short": 3},
                "histograms": {
                    "upstream_seconds": {"short": {"buckets": upstream, "sum": 0.0123}},
                    "added_latency_seconds": {"long": {"buckets": added, "sum": 0.0002}},
                },
                "active": ["short"],
            }
            for times in (1, 2):  # deltas: a second report adds again (the queue depth is a level)
                assert await post_report(st, report) == (204, None)
                after = await scrape(st)

                def grew(k: tuple[str, frozenset[tuple[str, str]]], after: Any = after) -> float:
                    return after[k] - before.get(k, 0.0)

                assert grew(key("requests_total", route="/generate", code="200")) == 5 * times
                assert grew(key("requests_total", route="/v1/chat/completions", code="429")) == 2 * times
                assert grew(key("routed_total", pool="short")) == 5 * times
                assert grew(key("fallbacks_total", pool="short", fallback="long")) == 1 * times
                assert grew(key("rejections_total", reason="overloaded")) == 2 * times
                assert grew(key("retries_total", pool="short", reason="connect_error")) == 1 * times
                assert after[key("queue_depth", pool="short")] == 3
                # Per-bucket deltas come out cumulative, like observations.
                running = 0
                for bound, d in zip([*bounds, float("inf")], upstream, strict=True):
                    running += d
                    le = "+Inf" if bound == float("inf") else str(float(bound))
                    assert grew(key("upstream_seconds_bucket", pool="short", le=le)) == running * times, le
                assert grew(key("upstream_seconds_count", pool="short")) == 6 * times
                assert abs(grew(key("upstream_seconds_sum", pool="short")) - 0.0123 * times) < 1e-9
                assert after[key("added_latency_seconds_count", pool="long")] == 4 * times
                assert after[key("added_latency_seconds_bucket", pool="long", le="5e-05")] == 4 * times

    asyncio.run(scenario())


def test_the_queue_depth_is_pythons_queue_plus_the_cores() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, config, core_link=True) as st:
            backend = GatedBackend()  # one request at a time (its /info), held until the gate opens
            cfg = config(st.urls)
            cfg["pools"].append(
                {
                    "name": "gated",
                    "maxInputTokens": 100,
                    "maxTotalTokens": 200,
                    "endpoints": [await serve_app(st, backend.app())],
                }
            )
            st.gateway.gateway.apply(parse_config(cfg))

            def depth() -> float:
                return st.metric("tgipool_gateway_queue_depth", pool="gated")

            headers = {"X-Model": "gated"}
            first = asyncio.create_task(st.generate("one", 2, headers))
            await wait_until(lambda: backend.seen == ["one"], "the first request upstream")
            second = asyncio.create_task(st.generate("two", 2, headers))
            await wait_until(lambda: depth() == 1, "the second request queued in Python")
            assert await post_report(st, {"queue_depth": {"gated": 2, "gone": 5}}) == (204, None)
            assert depth() == 3
            backend.gate.set()
            assert [(await t)[0] for t in (first, second)] == [200, 200]
            assert depth() == 2  # Python's queue emptied; the core's still waits
            assert await post_report(st, {}) == (204, None)  # a pool left out: the core has none queued
            assert depth() == 0

    asyncio.run(scenario())


def test_a_malformed_report_is_refused_naming_the_field_and_nothing_is_applied() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, config, core_link=True) as st:
            upstream = [0] * (len(st.gateway.gateway.metrics.bounds["upstream_seconds"]) + 1)
            cases: list[tuple[Any, str]] = [
                ({"requests": [{"route": "/generate", "code": "200", "n": 1}]}, "requests[0].code"),
                ({"routed": {"short": -1}}, "routed.short"),
                ({"active": "short"}, "active"),
                ({"routed": {"short": 1}, "surprise": 1}, "surprise"),
                (
                    {"histograms": {"upstream_seconds": {"short": {"buckets": [1, 2], "sum": 0.5}}}},
                    "histograms.upstream_seconds.short.buckets",
                ),
                (
                    {"histograms": {"upstream_seconds": {"short": {"buckets": upstream}}}},
                    "histograms.upstream_seconds.short.sum",
                ),
                (
                    {"histograms": {"cold_start_wait_seconds": {"short": {"buckets": upstream, "sum": 0}}}},
                    "histograms.cold_start_wait_seconds",
                ),
                ([1], "expected a JSON object"),
            ]
            for report, field in cases:
                status, body = await post_report(st, report)
                assert status == 400, report
                assert field in body["error"] and body["error_type"] == "bad_request", (field, body)
            async with st.session.post(st.url + "/internal/core/report", data=b"{not json") as resp:
                assert resp.status == 400
            # A report refused on its last field adds nothing from the others.
            bad = {
                "requests": [{"route": "/generate", "code": 200, "n": 5}],
                "histograms": {"upstream_seconds": {"short": {"buckets": [1], "sum": 0.1}}},
            }
            assert (await post_report(st, bad))[0] == 400
            assert st.metric("tgipool_gateway_requests_total", route="/generate", code="200") == 0
            async with st.session.get(st.url + "/internal/core/snapshot?after=0&wait=soon") as resp:
                assert resp.status == 400

    asyncio.run(scenario())


def test_the_internal_routes_are_not_found_on_a_gateway_not_core_linked() -> None:
    async def scenario() -> None:
        async with stack(BACKENDS, config) as st:
            status, body, _ = await get_snapshot(st, 0, wait=0)
            assert status == 404 and body["error_type"] == "not_found"
            status, _ = await post_report(st, {"routed": {"short": 5}})
            assert status == 404
            assert st.metric("tgipool_gateway_routed_total", pool="short") == 0

    asyncio.run(scenario())


def test_pools_the_core_served_keep_their_demand_lease_renewed() -> None:
    async def scenario() -> None:
        def with_warm(urls: dict[str, str]) -> dict[str, Any]:
            cfg = config(urls)
            cfg["pools"].append(
                {
                    "name": "warm",
                    "servedName": "m",
                    "maxInputTokens": 1000,
                    "maxTotalTokens": 2000,
                    "endpoints": [urls["short-a"]],
                    "holdSeconds": 5,
                    "maxPendingRequests": 10,
                    "demandLease": "warm-demand",
                }
            )
            return cfg

        async with stack(BACKENDS, with_warm, core_link=True) as st:
            api = Recorder()
            st.gateway.gateway.demand = Demand(api, "ml", "gw-0")
            assert await post_report(st, {"active": ["warm", "short", "gone"]}) == (204, None)
            await wait_until(lambda: bool(api.calls), "the Lease patch")
            await asyncio.sleep(0.05)
            assert len(api.calls) == 1  # short has no Lease; gone is no pool
            path, body = api.calls[0]
            assert path == "/apis/coordination.k8s.io/v1/namespaces/ml/leases/warm-demand"
            assert body["spec"]["holderIdentity"] == "gw-0" and "acquireTime" not in body["spec"]

    asyncio.run(scenario())


# --- `tgipool gateway --core BIN`, with a stand-in for the core ---
FAKE_CORE = """
import json, os, signal, sys, time, urllib.request

args = sys.argv[1:]
python = args[args.index("--python") + 1]
with urllib.request.urlopen(python + "/internal/core/snapshot?after=0", timeout=5) as resp:
    snapshot = json.load(resp)


def write(**extra):
    out = os.environ["FAKE_CORE_OUT"]
    with open(out + ".tmp", "w") as f:
        json.dump({"argv": args, "snapshot": snapshot, "pid": os.getpid(), **extra}, f)
    os.replace(out + ".tmp", out)


if os.environ["FAKE_CORE_MODE"] == "exit":
    write()
    sys.exit(3)


def on_term(*_):
    write(terminated=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
write()
while True:
    time.sleep(1)
"""


def stop_all(proc: subprocess.Popen[str], out: Path) -> None:
    """Leave no process behind, whatever the test found."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()
    if out.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(json.loads(out.read_text())["pid"], signal.SIGKILL)


def start_gateway(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], int, Path]:
    core = tmp_path / "fake-core"
    core.write_text(f"#!{sys.executable}\n{FAKE_CORE}")
    core.chmod(0o755)
    cfg = config({"short-a": "http://127.0.0.1:1", "short-b": "http://127.0.0.1:2", "long-a": "x"})
    cfg["pools"].pop()
    cfg["pools"][0]["fallbackPool"] = None
    (tmp_path / "gateway.yaml").write_text(json.dumps(cfg))
    out = tmp_path / "core.json"
    port = free_port()
    args = ["--config", str(tmp_path / "gateway.yaml"), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tgipool.gateway.cli", "gateway", *args, "--core", str(core)],
        env={**os.environ, "FAKE_CORE_OUT": str(out), "FAKE_CORE_MODE": mode},
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, port, out


def test_the_core_runs_as_a_child_in_front_of_python_and_stops_with_it(tmp_path: Path) -> None:
    proc, port, out = start_gateway(tmp_path, "serve")
    try:
        for _ in range(300):
            if out.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        seen = json.loads(out.read_text())
        argv = seen["argv"]
        assert argv[:3] == ["--listen", f"127.0.0.1:{port}", "--python"] and len(argv) == 4
        python_port = int(argv[3].removeprefix("http://127.0.0.1:"))
        assert python_port != port
        assert [p["name"] for p in seen["snapshot"]["pools"]] == ["short"]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
        assert proc.returncode == 0, stderr
        assert json.loads(out.read_text()).get("terminated") is True  # the core got SIGTERM first
    finally:
        stop_all(proc, out)


def test_a_core_that_exits_on_its_own_ends_the_gateway_non_zero(tmp_path: Path) -> None:
    proc, _, out = start_gateway(tmp_path, "exit")
    try:
        _, stderr = proc.communicate(timeout=20)
    finally:
        stop_all(proc, out)
    assert proc.returncode == 1, stderr
    assert "exited on its own (status 3)" in stderr
    assert json.loads(out.read_text())["snapshot"]["default_pool"] == "short"

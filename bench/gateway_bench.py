"""What a proxy adds: our gateway side by side with vllm-router (Rust, from PyPI) and nginx, in one run.

One fast TGI emulator (`tgipool emulate`, decode step `--decode-step-ms`, `--tokens` new tokens) runs in
a subprocess, so the time measured is dominated by HTTP handling. Four targets serve it:

* direct: the emulator itself;
* ours: `tgipool gateway` (a subprocess) with one pool holding that emulator: it still parses, tokenizes
  (the shared estimate) and routes every request;
* ours+core: the same gateway with its compiled data plane in front (`--core`, `make core`): the Go core
  parses, tokenizes, routes and proxies; Python stays the control plane. Its CPU is both processes';
* vllm-router: `vllm-router --worker-urls <emulator> --policy round_robin` (the `bench` dependency group),
  only when it is installed;
* nginx: a plain reverse proxy (`proxy_pass` to a keep-alive upstream, buffering off, one worker), only when
  `nginx` is on PATH (`make bench-deps`).

Two workloads, both `POST /v1/chat/completions`: `chat` (one JSON answer) and `stream` (`"stream": true`,
one SSE event per token). The load generator is this process (aiohttp, keep-alive connections). Each round
measures every workload on every target in turn (interleaved), so drift of the machine hits all alike:

* latency: one client, requests back to back, in slices of `--slice` requests with every target in turn:
  p50 / p99, the added latency of each proxy (its percentile minus direct's), and per slice the added
  p50 (a slice's p50 minus direct's in the same slice), so two proxies compare slice by slice;
* throughput: `--concurrency` clients in a closed loop: requests/s (and its ratio to direct), and the CPU
  per request of the proxy's processes (utime + stime from /proc over the window, divided by the
  requests answered in it).

It prints the table and the ratios ours / vllm-router and ours / nginx, writes them to
`bench/results/gateway.md` and `gateway.json` (`--out`), and compares the gateway's own
`tgipool_gateway_added_latency_seconds` (mean, over the latency runs) with what the client saw.

    .venv/bin/python bench/gateway_bench.py [--quick] [--rounds 3] [--requests 1500] [--slice 100]
        [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: its sibling modules
from gateway_report import OURS, ROUTE, render

HEADERS = {"Content-Type": "application/json"}
REPORT_SECONDS = 1.2  # the core reports its measurements to the gateway's /metrics every second
RESULTS = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream tgi {{ server 127.0.0.1:{backend}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://tgi;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def body(tokens: int, stream: bool) -> bytes:
    data = {
        "model": "tgi",
        "messages": [{"role": "user", "content": "Hello, how are you?"}],
        "max_tokens": tokens,
        "stream": stream,
    }
    return json.dumps(data, separators=(",", ":")).encode()


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate every process, then wait for each (bounded), killing what does not stop."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its live descendants (nginx's worker, any helper process)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0
    for p in tree:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


@dataclass
class Target:
    name: str
    url: str
    pid: int | None  # the process whose CPU is the proxy's (None: direct)


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)
    slices: list[float] = field(default_factory=list)  # the p50 of each slice of `--slice` requests
    rps: list[float] = field(default_factory=list)
    done: int = 0
    cpu: float = 0.0


async def wait_ready(url: str, payload: bytes, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post(url + ROUTE, data=payload, headers=HEADERS) as resp:
                    await resp.read()
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


@contextlib.contextmanager
def processes(
    tmp: Path, args: argparse.Namespace, nginx: str | None, router: str | None, core: str | None
) -> Iterator[list[Target]]:
    py = sys.executable
    backend = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    direct = f"http://127.0.0.1:{backend}"

    def start(cmd: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    try:
        emulator = start(
            [py, "-m", "tgipool.emulator.cli", "emulate", "--hostname", "127.0.0.1", "--port", str(backend),
             "--decode-step-ms", str(args.decode_step_ms), "--decode-step-growth-ms", "0",
             "--max-concurrent-requests", "4096", "--prefill-tokens-per-second", "100000000"]
        )  # fmt: skip
        targets = [Target("direct", direct, emulator.pid)]
        config = tmp / "gateway.yaml"
        config.write_text(
            "pools:\n- name: bench\n  maxInputTokens: 2048\n  maxTotalTokens: 4096\n"
            f"  maxConcurrentRequests: 4096\n  endpoints: [{direct}]\ndefaultPool: bench\n"
        )
        port = free_port()
        ours = start(
            [py, "-m", "tgipool.gateway.cli", "gateway", "--config", str(config), "--host", "127.0.0.1",
             "--port", str(port)]
        )  # fmt: skip
        targets.append(Target("ours", f"http://127.0.0.1:{port}", ours.pid))
        if core:
            port = free_port()
            proc = start(
                [py, "-m", "tgipool.gateway.cli", "gateway", "--config", str(config), "--host", "127.0.0.1",
                 "--port", str(port), "--core", core]
            )  # fmt: skip
            targets.append(Target("ours+core", f"http://127.0.0.1:{port}", proc.pid))
        if router:
            port = free_port()
            proc = start(
                [router, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", direct,
                 "--policy", "round_robin", "--log-level", "warning",
                 "--prometheus-port", str(free_port()), "--max-concurrent-requests", "4096"]
            )  # fmt: skip
            targets.append(Target("vllm-router", f"http://127.0.0.1:{port}", proc.pid))
        if nginx:
            port = free_port()
            conf = tmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=tmp, backend=backend, port=port))
            proc = start([nginx, "-c", str(conf), "-p", str(tmp)])
            targets.append(Target("nginx", f"http://127.0.0.1:{port}", proc.pid))
        yield targets
    finally:
        stop_all(procs)


async def one(session: aiohttp.ClientSession, url: str, payload: bytes) -> None:
    try:  # say which target failed
        async with session.post(url + ROUTE, data=payload, headers=HEADERS) as resp:
            await resp.read()
            status = resp.status
    except aiohttp.ClientError as e:
        raise RuntimeError(f"{url}: {e!r}") from e
    if status != 200:
        raise RuntimeError(f"{url}: HTTP {status}")


async def latency_run(session: aiohttp.ClientSession, url: str, payload: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await one(session, url, payload)
        out.append(time.perf_counter() - t)
    return out


async def throughput_run(
    session: aiohttp.ClientSession, url: str, payload: bytes, concurrency: int, seconds: float
) -> tuple[int, float]:
    """(requests answered, seconds) with `concurrency` clients in a closed loop."""
    stop = time.perf_counter() + seconds
    done = 0

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await one(session, url, payload)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done, time.perf_counter() - start


async def own_metric(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(sum, count) of the gateway's tgipool_gateway_added_latency_seconds."""
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("tgipool_gateway_added_latency_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("tgipool_gateway_added_latency_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


WORKLOADS = ("chat", "stream")


async def bench(args: argparse.Namespace, targets: list[Target]) -> dict[str, Any]:
    payloads = {w: body(args.tokens, w == "stream") for w in WORKLOADS}
    for t in targets:
        await wait_ready(t.url, payloads["chat"])
        print(f"  {t.name}: {t.url}", file=sys.stderr)
    samples = {(w, t.name): Sample() for w in WORKLOADS for t in targets}
    own = {t.name: [0.0, 0.0] for t in targets if t.name in OURS}  # the own metric's sum and count
    per_round = max(1, args.requests // args.rounds)
    slices = max(1, per_round // args.slice)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for t in targets:  # warm up connections and code paths
            for w in WORKLOADS:
                await latency_run(session, t.url, payloads[w], 100 if not args.quick else 20)
        for r in range(args.rounds):
            for w in WORKLOADS:
                # Latency in short slices, every target in turn, so a drift of the machine hits all
                # alike and each slice pairs the targets (the report's per-slice differences).
                await asyncio.sleep(REPORT_SECONDS)  # the core's measurements reach /metrics
                before = {t.name: await own_metric(session, t.url) for t in targets if t.name in own}
                for _ in range(slices):
                    for t in targets:
                        lat = await latency_run(session, t.url, payloads[w], max(1, per_round // slices))
                        samples[w, t.name].latencies += lat
                        samples[w, t.name].slices.append(pct(lat, 0.5))
                await asyncio.sleep(REPORT_SECONDS)
                for t in targets:
                    if t.name in own:
                        after = await own_metric(session, t.url)
                        own[t.name][0] += after[0] - before[t.name][0]
                        own[t.name][1] += after[1] - before[t.name][1]
                for t in targets:
                    s = samples[w, t.name]
                    cpu0 = cpu_seconds(t.pid) if t.pid else 0.0
                    done, took = await throughput_run(
                        session, t.url, payloads[w], args.concurrency, args.seconds / args.rounds
                    )
                    s.cpu += (cpu_seconds(t.pid) if t.pid else 0.0) - cpu0
                    s.done += done
                    s.rps.append(done / took)
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr)
    out: dict[str, Any] = {
        "command": " ".join(["bench/gateway_bench.py", *sys.argv[1:]]),
        "cpus": os.cpu_count(),
        "concurrency": args.concurrency,
        "tokens": args.tokens,
        "decode_step_ms": args.decode_step_ms,
        "workloads": {},
    }
    for w in WORKLOADS:
        direct = samples[w, "direct"]
        d50, d99 = pct(direct.latencies, 0.5), pct(direct.latencies, 0.99)
        dmean = statistics.fmean(direct.latencies)
        d_rps = statistics.fmean(direct.rps)
        rows = {}
        for t in targets:
            s = samples[w, t.name]
            p50, p99, rps = pct(s.latencies, 0.5), pct(s.latencies, 0.99), statistics.fmean(s.rps)
            rows[t.name] = {
                "p50_ms": p50 * 1e3,
                "p99_ms": p99 * 1e3,
                "added_p50_ms": (p50 - d50) * 1e3,
                "added_p99_ms": (p99 - d99) * 1e3,
                "added_mean_ms": (statistics.fmean(s.latencies) - dmean) * 1e3,
                "rps": rps,
                "rps_vs_direct": rps / d_rps,
                # direct's is the emulator's own cost per request, for scale
                "cpu_us_per_request": s.cpu / s.done * 1e6 if s.done else None,
                "latency_requests": len(s.latencies),
                # each slice's p50 minus direct's in the same slice, in ms
                "added_p50_slices_ms": [(a - b) * 1e3 for a, b in zip(s.slices, direct.slices, strict=True)],
                "throughput_requests": s.done,
            }
        out["workloads"][w] = rows
    for name, (total, count) in own.items():
        if count:
            seen = [out["workloads"][w][name]["added_mean_ms"] for w in WORKLOADS]
            out.setdefault("own_metric", {})[name] = {
                "own_metric_mean_ms": total / count * 1e3,
                "client_seen_added_mean_ms": statistics.fmean(seen),
            }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1500, help="latency requests per target and workload")
    parser.add_argument("--concurrency", type=int, default=32, help="clients in the throughput phase")
    parser.add_argument("--seconds", type=float, default=6.0, help="throughput time per target and workload")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--slice", type=int, default=100, help="latency requests per target in turn")
    parser.add_argument("--tokens", type=int, default=4, help="max_tokens of each request")
    parser.add_argument("--decode-step-ms", type=float, default=0.0, help="the emulator's decode step")
    parser.add_argument("--core", help="the compiled core's binary (default: tgipool-gateway-core on PATH)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, few requests, 1 s")
    parser.add_argument("--out", default=str(RESULTS), help="directory for gateway.md and gateway.json")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests, args.seconds, args.slice = 1, 200, 1.0, 50
    nginx = shutil.which("nginx")
    if nginx is None:
        print("nginx skipped: `nginx` is not on PATH (`make bench-deps`)", file=sys.stderr)
    venv_bin = str(Path(sys.executable).parent)
    router = shutil.which("vllm-router", path=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    if router is None:
        print("vllm-router skipped: not installed (`uv pip install --group bench`)", file=sys.stderr)
    core = args.core or shutil.which("tgipool-gateway-core")
    if core is None:
        print("ours+core skipped: tgipool-gateway-core not on PATH (`make core`)", file=sys.stderr)
    with (
        tempfile.TemporaryDirectory(prefix="gwbench-") as tmp,
        processes(Path(tmp), args, nginx, router, core) as targets,
    ):
        res = asyncio.run(bench(args, targets))
    text = render(res)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway.md").write_text("## Gateway overhead\n\n" + text)
    (out / "gateway.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

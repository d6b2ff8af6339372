"""What the gateway adds: latency (p50, p99) and throughput, side by side with direct access and nginx.

One fast TGI emulator (decode step 0 ms, 2 new tokens) runs in a subprocess, so the time measured is
dominated by HTTP handling. Three targets serve it:

* direct: the emulator itself;
* gateway: `tgipool gateway` (a subprocess) with one pool holding that emulator;
* nginx: a plain reverse proxy (`proxy_pass` to a keep-alive upstream, buffering off, one worker),
  only when `nginx` is on PATH: the benchmark installs nothing.

The load generator is this process (aiohttp, keep-alive connections). Targets are measured in alternating
rounds so that drift of the machine hits all of them alike:

* latency: one client, requests back to back; p50 / p99 per target, and the added latency of each proxy
  (its percentile minus direct's);
* throughput: `--concurrency` clients in a closed loop for `--seconds`; requests/s per target.

It prints ratios against direct (and gateway / nginx), plus the gateway's own overhead histogram
(`tgipool_gateway_added_latency_seconds`: total minus upstream time, measured inside the gateway).

    .venv/bin/python bench/gateway_bench.py [--requests 2000] [--concurrency 32] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

BODY = b'{"inputs":"Hello, how are you?","parameters":{"max_new_tokens":2}}'
HEADERS = {"Content-Type": "application/json"}

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post(url + "/generate", data=BODY, headers=HEADERS) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


@contextlib.contextmanager
def processes(tmp: Path, nginx: str | None) -> Iterator[dict[str, str]]:
    py = sys.executable
    backend, gateway = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    targets = {"direct": f"http://127.0.0.1:{backend}", "gateway": f"http://127.0.0.1:{gateway}"}
    try:
        procs.append(
            subprocess.Popen(
                [py, "-m", "tgipool.emulator.cli", "emulate", "--hostname", "127.0.0.1",
                 "--port", str(backend), "--decode-step-ms", "0", "--decode-step-growth-ms", "0",
                 "--max-concurrent-requests", "4096",
                 "--prefill-tokens-per-second", "100000000"],
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        config = tmp / "gateway.yaml"
        config.write_text(
            "pools:\n- name: bench\n  maxInputTokens: 2048\n  maxTotalTokens: 4096\n"
            f"  maxConcurrentRequests: 4096\n  endpoints: [{targets['direct']}]\ndefaultPool: bench\n"
        )
        procs.append(
            subprocess.Popen(
                [py, "-m", "tgipool.gateway.cli", "gateway", "--config", str(config), "--host", "127.0.0.1",
                 "--port", str(gateway)],
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        if nginx:
            port = free_port()
            conf = tmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=tmp, backend=backend, port=port))
            procs.append(
                subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)
            )
            targets["nginx"] = f"http://127.0.0.1:{port}"
        yield targets
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


async def latency_run(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.post(url + "/generate", data=BODY, headers=HEADERS) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{url}: HTTP {resp.status}")
        out.append(time.perf_counter() - t)
    return out


async def throughput_run(session: aiohttp.ClientSession, url: str, concurrency: int, seconds: float) -> float:
    stop = time.perf_counter() + seconds
    done = 0

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            async with session.post(url + "/generate", data=BODY, headers=HEADERS) as resp:
                await resp.read()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def gateway_overhead(url: str) -> str:
    """The median bucket of the gateway's own added-latency histogram."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith("tgipool_gateway_added_latency_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return "n/a"
    total = buckets[-1][1]
    p50 = next(le for le, c in buckets if c >= total / 2)
    p99 = next(le for le, c in buckets if c >= total * 0.99)
    return f"p50 <= {p50 * 1e3:.2f} ms, p99 <= {p99 * 1e3:.2f} ms ({int(total)} requests)"


async def bench(args: argparse.Namespace, targets: dict[str, str]) -> None:
    for url in targets.values():
        await wait_ready(url)
    connector = aiohttp.TCPConnector(limit=0)
    lat: dict[str, list[float]] = {name: [] for name in targets}
    tput: dict[str, list[float]] = {name: [] for name in targets}
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in targets.values():  # warm up connections and code paths
            await latency_run(session, url, 200)
        for r in range(args.rounds):
            for name, url in targets.items():
                lat[name] += await latency_run(session, url, args.requests // args.rounds)
                tput[name].append(
                    await throughput_run(session, url, args.concurrency, args.seconds / args.rounds)
                )
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr)
    d50, d99 = pct(lat["direct"], 0.5), pct(lat["direct"], 0.99)
    print(
        f"\nlatency (1 client, {len(lat['direct'])} requests each), throughput ({args.concurrency} clients)"
    )
    print(
        f"{'target':<8} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} "
        f"{'req/s':>9} {'vs direct':>10}"
    )
    rps = {name: statistics.fmean(v) for name, v in tput.items()}
    for name in targets:
        p50, p99 = pct(lat[name], 0.5), pct(lat[name], 0.99)
        print(
            f"{name:<8} {p50 * 1e3:>8.3f} {p99 * 1e3:>8.3f} "
            f"{(p50 - d50) * 1e3:>8.3f} {(p99 - d99) * 1e3:>8.3f} "
            f"{rps[name]:>9.0f} {rps[name] / rps['direct']:>9.2f}x"
        )
    if "nginx" in targets:
        g50, n50 = pct(lat["gateway"], 0.5) - d50, pct(lat["nginx"], 0.5) - d50
        g99, n99 = pct(lat["gateway"], 0.99) - d99, pct(lat["nginx"], 0.99) - d99
        print(
            f"\ngateway / nginx: added p50 {g50 * 1e3:.3f} / {n50 * 1e3:.3f} ms "
            f"(x{g50 / n50 if n50 > 0 else float('nan'):.1f}), "
            f"added p99 {g99 * 1e3:.3f} / {n99 * 1e3:.3f} ms, "
            f"throughput x{rps['gateway'] / rps['nginx']:.2f}"
        )
    print(f"gateway's own overhead histogram: {await gateway_overhead(targets['gateway'])}")
    print(f"(machine: {os.cpu_count()} CPUs shared by the emulator, the proxies and the load generator)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000, help="latency requests per target")
    parser.add_argument("--concurrency", type=int, default=32, help="clients in the throughput phase")
    parser.add_argument("--seconds", type=float, default=6.0, help="throughput time per target (all rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    args = parser.parse_args()
    nginx = shutil.which("nginx")
    if nginx is None:
        print("nginx column skipped: `nginx` is not on PATH (install nginx-light to compare; this benchmark "
              "installs nothing)", file=sys.stderr)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp, processes(Path(tmp), nginx) as targets:
        asyncio.run(bench(args, targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())

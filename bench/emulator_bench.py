"""Benchmark one TGI emulator at rising concurrency.

The emulator runs in a subprocess pinned to one CPU core (when the machine has more than one), the load
generator in this process on another, so the numbers say what one core of emulator sustains. Each level
is a closed loop: `concurrency` clients stream `/generate_stream` requests back to back for `--seconds`.

Per level it prints requests/s, generated tokens/s, p50/p95 request latency, the model's ideal token
rate (`concurrency / step(concurrency)` when everything fits in one batch) and the emulator's CPU use.
A level "is sustained" while the achieved token rate stays within 10% of the model's ideal: beyond that
the emulator's CPU, not the latency model, is the bottleneck.

    .venv/bin/python bench/emulator_bench.py [--levels 1,4,16,64,256] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import aiohttp


@dataclass
class Level:
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float

    def row(self, ideal_tps: float) -> str:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) if lat else float("nan")
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan")
        tps = self.tokens / self.seconds
        return (
            f"{self.concurrency:>6} {self.requests / self.seconds:>9.1f} {tps:>10.0f} {ideal_tps:>10.0f} "
            f"{tps / ideal_tps:>6.0%} {p50 * 1000:>8.0f} {p95 * 1000:>8.0f} "
            f"{self.cpu_seconds / self.seconds:>6.0%}"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:  # noqa: PTH123 - Linux only, like the benchmark itself
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, object], deadline: float, counter: list[int]
) -> float:
    """Stream one request; tokens are counted as they arrive inside the window (not per finished request)."""
    start = time.perf_counter()
    async with session.post(url + "/generate_stream", json=body) as resp:
        async for line in resp.content:
            if line.startswith(b"data:") and time.perf_counter() < deadline:
                counter[0] += 1
    return time.perf_counter() - start


async def run_level(url: str, pid: int, concurrency: int, seconds: float, body: dict[str, object]) -> Level:
    latencies: list[float] = []
    tokens = [0]
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            latencies.append(await one_stream(session, url, body, deadline, tokens))

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        cpu = cpu_seconds(pid) - cpu0  # includes draining the last requests, like `elapsed` below
        elapsed = time.perf_counter() - t0
    return Level(
        concurrency, len(latencies), tokens[0], min(elapsed, seconds), latencies, cpu * seconds / elapsed
    )


async def wait_ready(url: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < end:
            try:
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("emulator did not become healthy")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,4,16,64,256,1024")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--decode-step-ms", type=float, default=20.0)
    parser.add_argument("--decode-step-growth-ms", type=float, default=0.05)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    port = free_port()
    cmd = [
        sys.executable, "-m", "tgipool.emulator.cli", "emulate",
        "--hostname", "127.0.0.1", "--port", str(port),
        "--max-concurrent-requests", str(max(levels) * 2), "--max-total-tokens", "2048",
        "--max-batch-total-tokens", str(4096 * max(levels)), "--decode-step-ms", str(args.decode_step_ms),
        "--decode-step-growth-ms", str(args.decode_step_growth_ms), "--prefill-tokens-per-second", "1e9",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        os.sched_setaffinity(proc.pid, {cores[0]})
        os.sched_setaffinity(0, set(cores[1:]))
    url = f"http://127.0.0.1:{port}"
    body: dict[str, object] = {
        "inputs": "Benchmark prompt " * 8,
        "parameters": {"max_new_tokens": args.max_new_tokens},
    }
    try:
        asyncio.run(wait_ready(url))
        print(
            f"decode step {args.decode_step_ms} ms + {args.decode_step_growth_ms} ms/seq, "
            f"{args.max_new_tokens} new tokens/request, {args.seconds:.0f} s per level, emulator on 1 core"
        )
        print(
            f"{'conc':>6} {'req/s':>9} {'tok/s':>10} {'ideal':>10} {'eff':>6} "
            f"{'p50 ms':>8} {'p95 ms':>8} {'cpu':>6}"
        )
        sustained = 0
        for c in levels:
            level = asyncio.run(run_level(url, proc.pid, c, args.seconds, body))
            ideal = c / ((args.decode_step_ms + args.decode_step_growth_ms * c) / 1000.0)
            print(level.row(ideal), flush=True)
            if level.tokens / level.seconds >= 0.9 * ideal:
                sustained = c
        print(f"one core sustains >= {sustained} concurrent streams at >= 90% of the model's token rate")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

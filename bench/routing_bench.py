"""Routing quality: one mixed pool behind a round-robin proxy and behind our gateway, vs the split the planner
recommends behind our gateway, on the same emulated replicas and the same seeded Poisson arrivals.

    .venv/bin/python bench/routing_bench.py [--traffic bench/traffic/routing.yaml] [--seconds 40]
        [--loads 0.5,0.7,0.8,0.85] [--quick] [--out bench/results]

The replicas are `tgipool emulate` processes (the emulator's batching model, real HTTP). The load levels are
fractions of the mixed pool's capacity, the throughput it completes when over-offered, predicted by the
same model (`tgipool.sizing.simulate.capacity`). Three front ends serve each level in turn:

* rr-mixed: nginx round-robin over all replicas (a plain proxy; its 429s count as misses);
* gw-mixed: our gateway, one pool of all replicas (least work in flight);
* gw-split: our gateway, the pools and replicas `tgipool plan --traffic` recommends at the 80% level.

For each class it prints p95 end-to-end latency, SLO attainment (requests within the class's target,
errors count as misses) and the simulator's p95 for the same layout beside it; it writes
`routing.md`, `routing.json` and `routing.png` under --out. Goal (issue 14): at 80% load, short p95 at
least 3x lower than rr-mixed and long p95 no worse. Whether ANY static split of the same replicas could
meet it is checked too: every division of the replicas among the classes, in the simulator, against the
simulated rr-mixed at each load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from tgipool.sizing.simulate import PoolLayout, capacity, simulate
from tgipool.sizing.split import class_layout, compositions, mixed_layout, recommend
from tgipool.sizing.traffic import Sampler, Traffic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from gateway_bench import free_port, stop_all  # noqa: E402

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_buffer_size 1m;  # long prompts stay in memory (no temp file)
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream tgi {{ {servers} keepalive 512; }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        proxy_read_timeout 600s;
        location / {{
            proxy_pass http://tgi;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream off;
            proxy_buffering off;
        }}
    }}
}}
"""


@dataclass
class Measured:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def p95(self, name: str) -> float:
        values = sorted(self.latencies.get(name, []))
        n = len(values) + self.errors.get(name, 0)
        rank = math.ceil(0.95 * n) - 1
        return values[rank] if 0 <= rank < len(values) else math.inf

    def attainment(self, name: str, target: float) -> float:
        n = len(self.latencies.get(name, [])) + self.errors.get(name, 0)
        return sum(1 for t in self.latencies.get(name, []) if t <= target) / n if n else 1.0


def prompt(n: int) -> str:
    """Exactly n tokens for the emulator and the gateway (`approx_tokens`: ' ab' is one piece)."""
    return "ab" + " ab" * (n - 1)


def arrivals(traffic: Traffic, seconds: float, seed: int) -> list[tuple[float, str, int, int]]:
    rng = random.Random(seed)  # noqa: S311 - reproducible load, not secrets
    samplers = [(c.name, Sampler(c.input_tokens), Sampler(c.output_tokens)) for c in traffic.classes]
    shares = [c.share for c in traffic.classes]
    out: list[tuple[float, str, int, int]] = []
    t = 0.0
    while True:
        t += rng.expovariate(traffic.rate_per_second)
        if t >= seconds:
            return out
        name, s_in, s_out = rng.choices(samplers, weights=shares)[0]
        out.append((t, name, s_in.draw(rng), s_out.draw(rng)))


async def run_load(
    url: str, plan: list[tuple[float, str, int, int]], warmup: float, drain: float
) -> Measured:
    m = Measured()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=drain)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()

        async def one(at: float, name: str, n_in: int, n_out: int) -> None:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            sent = time.perf_counter()
            body = {"inputs": prompt(n_in), "parameters": {"max_new_tokens": n_out}}
            try:
                async with session.post(url + "/generate", json=body) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if at < warmup:
                return
            if ok:
                m.latencies.setdefault(name, []).append(time.perf_counter() - sent)
            else:
                m.errors[name] = m.errors.get(name, 0) + 1

        await asyncio.gather(*(one(*a) for a in plan))
    return m


def gateway_config(pools: list[PoolLayout], urls: list[str]) -> str:
    entries: list[dict[str, object]] = []
    doc = {
        "defaultPool": pools[0].name,
        "queueTimeoutSeconds": 600,
        "maxQueueLength": 100000,
        "pools": entries,
    }
    i = 0
    for p in pools:
        entries.append(
            {
                "name": p.name,
                "servedName": "llm",
                "maxInputTokens": p.max_input_tokens,
                "maxTotalTokens": p.max_total_tokens,
                "maxConcurrentRequests": 128,
                "endpoints": urls[i : i + p.replicas],
            }
        )
        i += p.replicas
    return yaml.safe_dump(doc)


@contextlib.contextmanager
def stack(tmp: Path, traffic: Traffic, split: list[PoolLayout], nginx: str) -> Iterator[dict[str, str]]:
    py, r = sys.executable, traffic.replica
    widest = mixed_layout(traffic)
    procs: list[subprocess.Popen[bytes]] = []
    ports = [free_port() for _ in range(traffic.replicas)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for port in ports:
            procs.append(
                subprocess.Popen(
                    [py, "-m", "tgipool.emulator.cli", "emulate", "--hostname", "127.0.0.1",
                     "--port", str(port),
                     "--max-input-tokens", str(widest.max_input_tokens),
                     "--max-total-tokens", str(widest.max_total_tokens),
                     "--max-batch-total-tokens", str(r.max_batch_total_tokens),
                     "--max-batch-prefill-tokens", str(r.max_batch_prefill_tokens),
                     "--max-concurrent-requests", str(r.max_concurrent_requests),
                     "--prefill-tokens-per-second", str(r.prefill_tokens_per_second),
                     "--decode-step-ms", str(r.decode_step_ms),
                     "--decode-step-growth-ms", str(r.decode_step_growth_ms)],
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        targets: dict[str, str] = {}
        conf = tmp / "nginx.conf"
        port = free_port()
        servers = " ".join(f"server 127.0.0.1:{p};" for p in ports)
        conf.write_text(NGINX_CONF.format(tmp=tmp, servers=servers, port=port))
        procs.append(subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL))
        targets["rr-mixed"] = f"http://127.0.0.1:{port}"
        for name, layout in (("gw-mixed", [widest]), ("gw-split", split)):
            cfg = tmp / f"{name}.yaml"
            cfg.write_text(gateway_config(layout, urls))
            port = free_port()
            procs.append(
                subprocess.Popen(
                    [py, "-m", "tgipool.gateway.cli", "gateway", "--config", str(cfg), "--host", "127.0.0.1",
                     "--port", str(port)],
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
            targets[name] = f"http://127.0.0.1:{port}"
        yield targets
    finally:
        stop_all(procs)


async def wait_ready(urls: list[str], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    body = {"inputs": "ab", "parameters": {"max_new_tokens": 1}}
    async with aiohttp.ClientSession() as session:
        for url in urls:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.post(url + "/generate", json=body) as resp:
                        if resp.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not become ready in {seconds:.0f} s")
                await asyncio.sleep(0.2)


def every_split(
    traffic: Traffic, seconds: float, seed: int, warmup: float
) -> list[tuple[tuple[int, ...], dict[str, float]]]:
    """Every static split's p95 per class (one pool per class, each division of the replicas, the gateway's
    routing and spill), so the goal's feasibility is answered for all layouts."""
    out = []
    for alloc in compositions(traffic.replicas, len(traffic.classes)):
        layout = [class_layout(c, n) for c, n in zip(traffic.classes, alloc, strict=True)]
        sim = simulate(traffic, layout, seconds, seed, warmup)
        out.append((alloc, {name: r.p95 for name, r in sim.items()}))
    return out


def feasibility(
    base: Traffic,
    cap: float,
    rr_sim: dict[float, dict[str, float]],
    seconds: float,
    seed: int,
    warmup: float,
) -> list[str]:
    """`rr_sim`: the simulated rr-mixed p95 per class at each load, as the live runs printed it."""
    names = [c.name for c in base.classes]
    first, last = names[0], names[-1]
    lines = [
        f"Every static split in the simulator (replicas per pool: {', '.join(names)}); goal: {first} p95 "
        f"<= rr-mixed's / 3 and {last} p95 <= rr-mixed's.",
        "",
        "| load | layout | " + " | ".join(f"{n} p95 s" for n in names) + " | meets the goal |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    for load, rr in rr_sim.items():
        splits = every_split(base.scaled(cap * load), seconds, seed, warmup)
        lines.append(f"| {load:.0%} | rr-mixed | " + " | ".join(f"{rr[n]:.2f}" for n in names) + " | |")
        for alloc, p95 in splits:
            ok = p95[first] * 3 <= rr[first] and p95[last] <= rr[last]
            lines.append(
                f"| {load:.0%} | {'/'.join(map(str, alloc))} | "
                + " | ".join(f"{p95[n]:.2f}" for n in names)
                + f" | {'yes' if ok else 'no'} |"
            )
    return lines


def plot(rows: list[dict[str, object]], classes: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(classes), figsize=(5 * len(classes), 4))
    for ax, name in zip(axes, classes, strict=True):
        for front in ("rr-mixed", "gw-mixed", "gw-split"):
            pts = [(r["load"], r[f"{name}_p95"]) for r in rows if r["front"] == front]
            ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=front)  # type: ignore[operator]
        ax.set_title(f"{name}: p95 end-to-end latency")
        ax.set_xlabel("load (% of the mixed pool's capacity)")
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--traffic", default=str(ROOT / "bench/traffic/routing.yaml"))
    parser.add_argument("--seconds", type=float, default=40.0, help="arrivals per run (default 40)")
    parser.add_argument("--loads", default="0.5,0.7,0.8,0.85", help="fractions of the mixed pool's capacity")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one 15 s run at 80%% (smoke test)")
    parser.add_argument("--out", default=str(ROOT / "bench/results"))
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.loads = 15.0, "0.8"
    nginx = shutil.which("nginx")
    if nginx is None:
        print("error: nginx is not on PATH (make bench-deps)", file=sys.stderr)
        return 2
    base = Traffic.model_validate(yaml.safe_load(Path(args.traffic).read_text()))
    loads = [float(x) for x in args.loads.split(",")]
    cap = capacity(base, [mixed_layout(base)])
    rec = recommend(base.scaled(cap * 0.8), seconds=60)
    split = [PoolLayout(p.name, p.max_input_tokens, p.max_total_tokens, p.replicas) for p in rec.pools]
    print(f"mixed pool capacity (simulated): {cap:.1f} req/s; planner's split at 80%: "
          + ", ".join(f"{p.name} x{p.replicas}" for p in split)
          + f" (recommended: {'split' if rec.split_wins else 'mixed'})", file=sys.stderr)  # fmt: skip
    names = [c.name for c in base.classes]
    # The best a class can do: its p95 alone on an idle replica (rare arrivals), by the same model.
    floor = {
        c.name: simulate(
            base.model_copy(
                update={"rate_per_second": 0.2, "classes": [c.model_copy(update={"share": 1.0})]}
            ),
            [PoolLayout(c.name, c.max_input, c.max_total, 1)],
            seconds=600,
        )[c.name].p95
        for c in base.classes
    }
    targets_s = {c.name: c.p95_seconds for c in base.classes}
    warmup = min(5.0, args.seconds / 5)
    rows: list[dict[str, object]] = []
    with (
        tempfile.TemporaryDirectory(prefix="routebench-") as tmp,
        stack(Path(tmp), base, split, nginx) as fronts,
    ):
        asyncio.run(wait_ready(list(fronts.values())))
        for load in loads:
            traffic = base.scaled(cap * load)
            plan = arrivals(traffic, args.seconds, args.seed)
            for front, url in fronts.items():
                layout = split if front == "gw-split" else [mixed_layout(base)]
                sim = simulate(
                    traffic, layout, args.seconds, args.seed, warmup, round_robin=front == "rr-mixed"
                )
                m = asyncio.run(run_load(url, plan, warmup, drain=600))
                row: dict[str, object] = {
                    "load": load,
                    "front": front,
                    "rate": round(traffic.rate_per_second, 2),
                }
                for name in names:
                    row[f"{name}_p95"] = round(m.p95(name), 3)
                    row[f"{name}_attainment"] = round(m.attainment(name, targets_s[name]), 4)
                    row[f"{name}_errors"] = m.errors.get(name, 0)
                    row[f"{name}_sim_p95"] = round(sim[name].p95, 3)
                rows.append(row)
                print(f"  {load:.0%} {front}: " + ", ".join(
                    f"{n} p95 {row[f'{n}_p95']} s (sim {row[f'{n}_sim_p95']})" for n in names),
                      file=sys.stderr)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = "| load | req/s | front | " + " | ".join(
        f"{n} p95 s (sim) | {n} within {targets_s[n]:g} s | {n} errors" for n in names) + " |"  # fmt: skip
    lines = [header, "|" + "---|" * (3 + 3 * len(names))]
    for r in rows:
        lines.append(f"| {r['load']:.0%} | {r['rate']} | {r['front']} | " + " | ".join(
            f"{r[f'{n}_p95']} ({r[f'{n}_sim_p95']}) | {r[f'{n}_attainment']:.1%} | {r[f'{n}_errors']}"
            for n in names) + " |")  # fmt: skip
    verdicts = []
    for load in loads:
        by = {r["front"]: r for r in rows if r["load"] == load}
        rr, gs = by["rr-mixed"], by["gw-split"]
        short_x = float(rr[f"{names[0]}_p95"]) / float(gs[f"{names[0]}_p95"])  # type: ignore[arg-type]
        long_ok = float(gs[f"{names[-1]}_p95"]) <= float(rr[f"{names[-1]}_p95"])  # type: ignore[arg-type]
        bound = float(rr[f"{names[0]}_p95"]) / floor[names[0]]  # type: ignore[arg-type]
        verdicts.append(
            f"- {load:.0%}: {names[0]} p95 {short_x:.2f}x lower behind gw-split than rr-mixed "
            f"(goal >= 3x: {'met' if short_x >= 3 else 'NOT met'}; "
            f"no layout can beat {bound:.2f}x, rr-mixed's "
            f"p95 over the idle floor of {floor[names[0]]:.2f} s); {names[-1]} p95 "
            f"{'no worse (met)' if long_ok else 'WORSE (NOT met)'}"
        )
    rr_sim = {
        float(r["load"]): {n: float(r[f"{n}_sim_p95"]) for n in names}  # type: ignore[arg-type]
        for r in rows
        if r["front"] == "rr-mixed"
    }
    text = (
        f"Mixed pool capacity (simulated): {cap:.1f} req/s. Planner's split at 80%: "
        + ", ".join(
            f"{p.name} x{p.replicas} (<= {p.max_input_tokens}/{p.max_total_tokens} tokens)" for p in split
        )
        + f"; `tgipool plan` recommended: {'split' if rec.split_wins else 'one mixed pool'}.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(verdicts)
        + "\n\n"
        + "\n".join(feasibility(base, cap, rr_sim, args.seconds, args.seed, warmup))
        + "\n"
    )
    (out / "routing.md").write_text(text)
    (out / "routing.json").write_text(json.dumps({"capacity": cap, "rows": rows}, indent=2))
    plot(rows, names, out / "routing.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

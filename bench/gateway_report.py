"""The gateway bench's table, ratios and issue 14's goals, from the results `gateway_bench.py` measured."""

from __future__ import annotations

import statistics
from typing import Any

OURS = ("ours", "ours+core")  # our gateway: Python alone, and with its compiled core in front
ROUTE = "/v1/chat/completions"
# What each one's own added-latency metric cannot see of what the client sees it add.
UNSEEN = {
    "ours": "Python times a request from when its bytes are read, so it misses its own wake-ups: the waits "
    "for the process to read the request and the upstream's answer, and the client's side of the extra hop",
    "ours+core": "the core times by the kernel's receive stamps, so its wake-ups count; it misses the "
    "client's side of the extra hop and, on streams, the last write of the chunked ending",
}


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "n/a"
    return f"{a / b:.2f}x"


def slice_comparison(name: str, ours: dict[str, Any], other_name: str, other: dict[str, Any]) -> str | None:
    """How the added p50 of `ours` and `other` compare slice by slice (each slice measured both within
    seconds of each other): the median difference, its quartiles, and the slices where ours is not above."""
    a, b = ours.get("added_p50_slices_ms"), other.get("added_p50_slices_ms")
    if not a or not b or len(a) != len(b) or len(a) < 2:
        return None
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    q1, med, q3 = statistics.quantiles(diffs, n=4)
    below = sum(d <= 0 for d in diffs)
    return (
        f"{name} minus {other_name}, added p50 per slice ({len(diffs)} slices): median {med:+.3f} ms "
        f"(quartiles {q1:+.3f} to {q3:+.3f}); at or below in {below} of {len(diffs)}"
    )


def render(res: dict[str, Any]) -> str:
    lines = [
        f"Command: `.venv/bin/python {res['command']}`  ",
        f"Machine: {res['cpus']} CPUs shared by the emulator, the proxy and the load generator. "
        f"`POST {ROUTE}`, {res['tokens']} tokens, emulator decode step {res['decode_step_ms']:g} ms; "
        f"latency with 1 client, throughput and CPU with {res['concurrency']} clients.",
        "",
    ]
    for w, rows in res["workloads"].items():
        lines += [
            f"### {w}",
            "",
            "| target | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s | vs direct | CPU µs/req |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in rows.items():
            cpu = r["cpu_us_per_request"]
            cpu_text = "n/a" if cpu is None else f"{cpu:.0f}" + (" (emulator)" if name == "direct" else "")
            lines.append(
                f"| {name} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['added_p50_ms']:+.3f} | "
                f"{r['added_p99_ms']:+.3f} | {r['rps']:.0f} | {r['rps_vs_direct']:.2f}x | {cpu_text} |"
            )
        for name in (n for n in OURS if n in rows):
            ours = rows[name]
            for other in ("vllm-router", "nginx"):
                if other in rows:
                    o = rows[other]
                    lines.append(
                        f"\n{name} / {other}: added p50 {ratio(ours['added_p50_ms'], o['added_p50_ms'])}, "
                        f"added p99 {ratio(ours['added_p99_ms'], o['added_p99_ms'])}, "
                        f"CPU per request {ratio(ours['cpu_us_per_request'], o['cpu_us_per_request'])}, "
                        f"throughput {ratio(ours['rps'], o['rps'])}"
                    )
                    if (paired := slice_comparison(name, ours, other, o)) is not None:
                        lines.append(f"\n{paired}")
        lines.append("")
    for name, m in res.get("own_metric", {}).items():
        lines.append(
            f"- {name}: tgipool_gateway_added_latency_seconds (the gateway's own metric), mean over the "
            f"latency runs: {m['own_metric_mean_ms']:.3f} ms; added mean the client saw: "
            f"{m['client_seen_added_mean_ms']:.3f} ms ({UNSEEN[name]})."
        )
    lines += ["", "Goals (issue 14), per workload:", "", *goals(res)]
    return "\n".join(lines) + "\n"


def goals(res: dict[str, Any]) -> list[str]:
    """Issue 14's gateway goals: CPU per request and added p50 at or below vllm-router's, throughput at
    `--concurrency` clients at least 0.95x direct."""
    out = []
    for w, rows in res["workloads"].items():
        name = "ours+core" if "ours+core" in rows else "ours"  # what ships when the core is built
        ours, router = rows[name], rows.get("vllm-router")
        checks: list[tuple[str, bool | None]] = [
            (f"throughput {ours['rps_vs_direct']:.2f}x direct (goal >= 0.95x)", ours["rps_vs_direct"] >= 0.95)
        ]
        if router is not None:
            for key, label in (("cpu_us_per_request", "CPU per request"), ("added_p50_ms", "added p50")):
                a, b = ours[key], router[key]
                if a is not None and b is not None:
                    checks.append((f"{label} {ratio(a, b)} vllm-router's (goal <= 1x)", a <= b))
            if (paired := slice_comparison(name, ours, "vllm-router", router)) is not None:
                checks.append((paired, None))
        else:
            checks.append(("vllm-router not run: its goals are not judged", False))
        for text, ok in checks:
            verdict = "" if ok is None else ": met" if ok else ": NOT met"
            out.append(f"- {w} ({name}): {text}{verdict}")
    return out

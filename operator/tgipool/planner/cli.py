"""`tgipool plan`: KV cache, weights, feasibility, and (given rates) latency, QPS and cost per pool."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tgipool.api.parse import describe_validation_error, parse_pool
from tgipool.planner import memory
from tgipool.planner.performance import plan_performance
from tgipool.planner.verdicts import Assessment, assess
from tgipool.sizing import cli as sizing_cli


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `plan` on the subparsers of the `tgipool` parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "plan",
        help="check that each pool's weights and KV cache fit its GPUs; latency, QPS and cost from rates",
        description="Capacity plan of ModelPools: KV bytes per token, weights per GPU, concurrent "
        "sequences at maxTotalTokens, and with --prefill/--decode rates latency, QPS and cost.",
    )
    p.add_argument(
        "-f", "--filename", action="append", metavar="FILE",
        help="a YAML file or a folder of them (repeatable)",
    )  # fmt: skip
    p.add_argument("--config", metavar="CONFIG_JSON", help="the model's HuggingFace config.json (all pools)")
    p.add_argument(
        "--prefill-tokens-per-second", "-P", type=float, metavar="P", help="prefill rate of one replica"
    )
    p.add_argument(
        "--decode-tokens-per-second", "-D", type=float, metavar="D",
        help="one replica's aggregate decode throughput (tokens/s over its whole batch)",
    )  # fmt: skip
    p.add_argument("--input-tokens", type=int, metavar="N", help="prompt length (default maxInputTokens)")
    p.add_argument(
        "--output-tokens", type=int, metavar="N", help="generated tokens (default maxTotal - maxInput)"
    )
    p.add_argument("--batch", type=int, metavar="B", help="concurrent sequences (default: what fits, capped)")
    p.add_argument("--overhead-seconds", type=float, default=0.0, help="per-request overhead (default 0)")
    p.add_argument("--namespace", "-n", default="default", help="namespace for pools that name none")
    p.add_argument("--json", action="store_true", help="a JSON array, one object per pool")
    p.add_argument("--strict", action="store_true", help="exit 1 when a pool would be refused")
    sizing_cli.add_arguments(p)
    p.set_defaults(func=cmd_plan)
    return p


def _pools_in(paths: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in paths:
        files = sorted(Path(path).glob("*.yaml")) if Path(path).is_dir() else [Path(path)]
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "ModelPool":
                    yield str(f), doc


def _row(a: Assessment, args: argparse.Namespace) -> dict[str, Any]:
    p, f = a.plan, a.plan.fit
    row: dict[str, Any] = {
        "name": p.name,
        "namespace": p.namespace,
        "model": p.model_id,
        "status": a.status,
        "reason": a.reason,
        "message": a.message,
        "feasible": a.feasible,
        "reasons": list(a.reasons),
        "numLayers": p.architecture.num_layers,
        "numKeyValueHeads": p.architecture.num_key_value_heads,
        "headDim": p.architecture.head_dim,
        "parameters": p.architecture.parameters,
        "engine": p.engine,
        "memoryFraction": p.cuda_memory_fraction,
        "quantize": p.quantize,
        "kvCacheDtype": p.kv_cache_dtype,
        "gpusPerReplica": p.gpus,
        "gpuMemoryGiB": p.memory_gib,
        "kvBytesPerToken": p.kv_bytes_per_token,
        "kvBytesPerTokenPerGpu": f.kv_bytes_per_token_per_gpu if f else None,
        "weightsBytes": p.weights_bytes_total,
        "weightsBytesPerGpu": a.capacity["weightsBytes"],
        "kvCacheBytesPerGpu": f.kv_budget_bytes_per_gpu if f else None,
        "kvCacheTokens": f.kv_tokens if f else None,
        "maxInputTokens": p.max_input_tokens,
        "maxTotalTokens": p.max_total_tokens,
        "maxConcurrentSequences": a.capacity["maxConcurrentSequences"],
    }
    if args.prefill_tokens_per_second and args.decode_tokens_per_second:
        perf, l_in, l_out, batch = plan_performance(
            p,
            args.prefill_tokens_per_second,
            args.decode_tokens_per_second,
            input_tokens=args.input_tokens,
            output_tokens=args.output_tokens,
            batch=args.batch,
            overhead_seconds=args.overhead_seconds,
        )
        row.update(
            inputTokens=l_in,
            outputTokens=l_out,
            batch=batch,
            latencySeconds=perf.latency_seconds,
            qps=perf.qps,
            tokensPerHour=perf.tokens_per_hour,
            costPerMillionTokens=perf.cost_per_million_tokens,
        )
    return row


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / memory.GIB:,.2f} GiB"


def _num(n: float | int | None, fmt: str = ",") -> str:
    return "unknown" if n is None else format(n, fmt)


def _table(row: dict[str, Any]) -> str:
    params = row["parameters"]
    arch = (
        f"{_num(row['numLayers'])} layers, {_num(row['numKeyValueHeads'])} KV heads x "
        f"{_num(row['headDim'])}, {'?' if params is None else f'{params / 1e9:.2f}B'} parameters"
    )
    lines = [
        ("model", f"{row['model']} ({arch})"),
        ("engine", f"{row['engine']}, {row['memoryFraction']:g} of each GPU's memory"),
        ("weights", f"{row['quantize'] or '16-bit'}, {row['gpusPerReplica']} GPU(s) per replica"),
        ("KV cache dtype", row["kvCacheDtype"] or "model dtype (2 bytes)"),
        ("KV bytes/token", f"{_num(row['kvBytesPerToken'])} (per GPU {_num(row['kvBytesPerTokenPerGpu'])})"),
        ("weights/GPU", _gib(row["weightsBytesPerGpu"])),
        ("GPU memory", "unknown" if row["gpuMemoryGiB"] is None else f"{row['gpuMemoryGiB']:g} GiB"),
        ("KV cache/GPU", _gib(row["kvCacheBytesPerGpu"])),
        ("KV tokens", _num(row["kvCacheTokens"])),
        (
            "max sequences",
            f"{_num(row['maxConcurrentSequences'])} at maxTotalTokens {row['maxTotalTokens']:,}",
        ),
    ]
    if "latencySeconds" in row:
        cost = row["costPerMillionTokens"]
        lines += [
            ("workload", f"{row['inputTokens']:,} in + {row['outputTokens']:,} out, batch {row['batch']}"),
            ("latency", f"{row['latencySeconds']:.2f} s"),
            ("QPS/replica", f"{row['qps']:.2f}"),
            ("tokens/hour", f"{row['tokensPerHour']:,.0f}"),
            ("cost/1M tokens", "unknown (no gpu.hourlyPrice)" if cost is None else f"{cost:.4f}"),
        ]
    head = f"{row['namespace']}/{row['name']}: CapacityFeasible={row['status']} ({row['reason']})"
    body = [f"  {k:<15} {v}" for k, v in [("verdict", row["message"]), *lines]]
    notes = [f"  ! {r}" for r in row["reasons"] if r != row["message"]]
    return "\n".join([head, *body, *notes])


def cmd_plan(args: argparse.Namespace) -> int:
    if args.traffic:
        return sizing_cli.cmd(args)
    if not args.filename:
        print("error: give ModelPools (-f FILE) or a traffic description (--traffic FILE)", file=sys.stderr)
        return 2
    config: dict[str, Any] | None = None
    if args.config:
        try:
            loaded = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as err:
            print(f"error: --config {args.config}: {err}", file=sys.stderr)
            return 2
        if not isinstance(loaded, dict):
            print(f"error: --config {args.config}: not a JSON object", file=sys.stderr)
            return 2
        config = loaded
    rows: list[dict[str, Any]] = []
    try:
        docs = list(_pools_in(args.filename))
    except (OSError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for source, doc in docs:
        meta = doc.get("metadata")
        if isinstance(meta, dict):
            meta.setdefault("namespace", args.namespace)
        try:
            pool = parse_pool(doc)
        except (ValidationError, KeyError) as err:
            name = meta.get("name", "?") if isinstance(meta, dict) else "?"
            why = describe_validation_error(err) if isinstance(err, ValidationError) else "metadata missing"
            print(f"error: {source}: ModelPool {name}: {why}", file=sys.stderr)
            return 2
        try:
            rows.append(_row(assess(pool, config), args))
        except ValueError as err:
            print(f"error: {source}: ModelPool {pool.name}: {err}", file=sys.stderr)
            return 2
    if not rows:
        print(f"error: no ModelPool in {', '.join(args.filename)}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        sys.stdout.write("\n\n".join(_table(r) for r in rows) + "\n")
    return 1 if args.strict and any(r["status"] == "False" for r in rows) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tgipool.planner.cli ...`, until `tgipool plan` is wired."""
    parser = argparse.ArgumentParser(prog="tgipool")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

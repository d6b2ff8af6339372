"""`tgipool plan --traffic FILE`: the pools and replicas a traffic description needs, and the mixed pool."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tgipool.api.parse import describe_validation_error
from tgipool.desired.names import PLANNED_RPS_ANNOTATION
from tgipool.sizing.split import Recommendation, fmt_seconds, recommend
from tgipool.sizing.traffic import Traffic


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--traffic", metavar="FILE",
        help="size pools from a traffic description (rate, classes with token histograms and p95 targets, "
        "gpuBudget) instead of checking ModelPools; see `tgipool.sizing.traffic`",
    )  # fmt: skip
    p.add_argument("--seconds", type=float, default=60.0, help="simulated seconds per candidate (default 60)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated arrivals (default 1)")
    p.add_argument(
        "--emit-pools", metavar="MODEL_ID",
        help="with --traffic: print ModelPool YAML for the split (model.id MODEL_ID) instead of a table",
    )  # fmt: skip


def load(path: str) -> Traffic:
    return Traffic.model_validate(yaml.safe_load(Path(path).read_text()))


def as_json(rec: Recommendation) -> dict[str, Any]:
    def num(v: float) -> float | None:
        return None if v == float("inf") else round(v, 3)

    return {
        "feasible": rec.feasible,
        "recommended": "split" if rec.split_wins else "mixed",
        "budgetReplicas": rec.budget_replicas,
        "gpusPerReplica": rec.gpus_per_replica,
        "pools": [
            {
                "name": p.name,
                "maxInputTokens": p.max_input_tokens,
                "maxTotalTokens": p.max_total_tokens,
                "replicas": p.replicas,
                "requestsPerSecond": round(p.requests_per_second, 3),
                "targetP95Seconds": p.target_p95,
                "p50Seconds": num(p.p50),
                "p95Seconds": num(p.p95),
                "attainment": round(p.attainment, 4),
            }
            for p in rec.pools
        ],
        "mixed": {
            name: {"p50Seconds": num(r.p50), "p95Seconds": num(r.p95), "attainment": round(r.attainment, 4)}
            for name, r in rec.mixed.items()
        },
    }


def table(rec: Recommendation) -> str:
    lines = [
        f"{'POOL':<12} {'MAX-INPUT':>9} {'MAX-TOTAL':>9} {'REPLICAS':>8} {'REQ/S':>7} "
        f"{'P95-TARGET':>10} {'P50':>7} {'P95':>7} {'MIXED-P95':>9} {'MET':>5}"
    ]
    for p in rec.pools:
        mixed = rec.mixed[p.name]
        lines.append(
            f"{p.name:<12} {p.max_input_tokens:>9} {p.max_total_tokens:>9} {p.replicas:>8} "
            f"{p.requests_per_second:>7.2f} {p.target_p95:>10.2f} "
            f"{fmt_seconds(p.p50):>7} {fmt_seconds(p.p95):>7} "
            f"{fmt_seconds(mixed.p95):>9} {p.attainment:>5.0%}"
        )
    verdict = "meets every class's p95 target" if rec.feasible else "does NOT meet every p95 target"
    pick = "split" if rec.split_wins else "ONE MIXED POOL"
    lines.append(
        f"\n{rec.budget_replicas} replicas x {rec.gpus_per_replica} GPU: the split {verdict}; "
        "MIXED-P95 is one pool of all replicas serving every class (same simulated arrivals). "
        "MET: requests within the target."
        f"\nRecommended: {pick} "
        f"(worst p95/target: split {rec.worst_ratio:.2f}, mixed {rec.mixed_worst_ratio:.2f})."
    )
    return "\n".join(lines)


def pools_yaml(rec: Recommendation, model_id: str) -> str:
    docs = []
    for p in rec.pools:
        docs.append(
            {
                "apiVersion": "tgipool.io/v1alpha1",
                "kind": "ModelPool",
                "metadata": {
                    "name": p.name,
                    "annotations": {PLANNED_RPS_ANNOTATION: f"{p.requests_per_second:g}"},
                },
                "spec": {
                    # staging until model.revision is pinned to a commit (prod requires it)
                    "environment": "staging",
                    "model": {"id": model_id},
                    "profile": "custom",
                    "limits": {"maxInputTokens": p.max_input_tokens, "maxTotalTokens": p.max_total_tokens},
                    "replicas": {"min": p.replicas, "max": p.replicas},
                    "slo": {"p95LatencyMs": round(p.target_p95 * 1000)},
                },
            }
        )
    return yaml.safe_dump_all(docs, sort_keys=False)


def cmd(args: argparse.Namespace) -> int:
    try:
        traffic = load(args.traffic)
    except (OSError, yaml.YAMLError) as err:
        print(f"error: --traffic {args.traffic}: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        print(f"error: --traffic {args.traffic}: {describe_validation_error(err)}", file=sys.stderr)
        return 2
    try:
        rec = recommend(traffic, args.seconds, args.seed)
    except ValueError as err:
        print(f"error: --traffic {args.traffic}: {err}", file=sys.stderr)
        return 2
    if args.emit_pools:
        print(pools_yaml(rec, args.emit_pools), end="")
    elif args.json:
        print(json.dumps(as_json(rec), indent=2))
    else:
        print(table(rec))
    return 0 if rec.feasible or not args.strict else 1

"""`tgipool`: run the operator, render a pool's children, print the CRDs, diagnose and check pools."""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tgipool.api.crd import all_crds
from tgipool.api.modelpool import KIND
from tgipool.api.parse import describe_validation_error, parse_pool
from tgipool.config import DEFAULT_CONFIG
from tgipool.desired import build_children


def _dump_all(docs: Sequence[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)


def _pools_in(paths: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for p in paths:
        files = sorted(Path(p).glob("*.yaml")) if Path(p).is_dir() else [Path(p)]
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == KIND:
                    yield str(f), doc


def cmd_render(args: argparse.Namespace) -> int:
    out: list[dict[str, Any]] = []
    for source, doc in _pools_in(args.filename):
        doc.setdefault("metadata", {}).setdefault("namespace", args.namespace)
        try:
            pool = parse_pool(doc)
        except ValidationError as err:
            name = doc.get("metadata", {}).get("name", "?")
            print(f"error: {source}: ModelPool {name}: {describe_validation_error(err)}", file=sys.stderr)
            return 2
        out += build_children(pool, DEFAULT_CONFIG).all()
    sys.stdout.write(_dump_all(out))
    return 0


def cmd_crds(args: argparse.Namespace) -> int:
    if args.dir:
        out = Path(args.dir)
        out.mkdir(parents=True, exist_ok=True)
        for crd in all_crds():
            (out / f"{crd['spec']['group']}_{crd['spec']['names']['plural']}.yaml").write_text(
                _dump_all([crd])
            )
    else:
        sys.stdout.write(_dump_all(all_crds()))
    return 0


def _lean_heap() -> None:
    """glibc gives each thread that allocates an arena of its own (up to 8 per core, kept for good):
    the API client's threads parse every answer, and their fragmented arenas grew RSS with the pools
    well past what the heap holds. Two arenas keep it close.

    TGIPOOL_HEAPDUMP=FILE: on SIGUSR1 the operator writes what its heap holds to FILE (for the
    operator bench): resident memory by kind of mapping, pymalloc's arenas, malloc's in-use and free
    bytes, Python objects by type (shallow sizes), and with TGIPOOL_TRACEMALLOC=N (slow) the allocating
    lines (N > 1: the five largest holders' N-frame tracebacks too)."""
    import contextlib
    import ctypes
    import os

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    dump = os.environ.get("TGIPOOL_HEAPDUMP")
    if not dump:
        return
    import signal
    import tracemalloc

    if os.environ.get("TGIPOOL_TRACEMALLOC"):  # a number above 1: frames kept per allocation
        tracemalloc.start(max(1, int(os.environ["TGIPOOL_TRACEMALLOC"] or 1)))

    def write(*_: Any) -> None:
        from tgipool.heapdump import heap_report

        Path(dump).write_text(heap_report())

    signal.signal(signal.SIGUSR1, write)


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    import kopf

    _lean_heap()  # before any thread starts

    import tgipool.handlers.modelgateway
    import tgipool.handlers.pool  # noqa: F401  registers the handlers
    from tgipool.handlers.peering import own_identity
    from tgipool.options import RunOptions

    if args.metrics_interval <= 0:
        raise SystemExit("--metrics-interval must be above 0 seconds")
    # kopf's identity is chosen here so that the startup handler can announce it before kopf lists peers.
    identity: Any = own_identity() if args.peering else None
    options = RunOptions(
        prometheus_url=args.prometheus_url,
        metrics_window=args.metrics_window,
        metrics_interval=args.metrics_interval,
        metrics_port=args.metrics_port,
        peering_identity=identity,
        namespaces=tuple(args.namespace or ()),
    )
    kopf.configure(
        verbose=args.verbose, log_format=kopf.LogFormat.JSON if args.json_logs else kopf.LogFormat.FULL
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    asyncio.run(
        kopf.operator(
            namespaces=args.namespace or [],
            clusterwide=not args.namespace,
            standalone=args.peering is None,
            peering_name=args.peering,
            identity=identity,
            # kopf pauses every peer that shares the highest priority: without distinct
            # priorities all replicas would stand by. A random one makes exactly one active.
            priority=args.priority if args.priority is not None else random.randint(1, 1_000_000),  # noqa: S311  not a secret
            liveness_endpoint=args.liveness,
            memo=kopf.Memo(options=options),
        )
    )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tgipool",
        description="Run pools of HuggingFace Text Generation Inference servers on Kubernetes.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the current kubeconfig")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        metavar="NS",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    run.add_argument("--peering", metavar="NAME", help="kopf peering object, for a standby replica")
    run.add_argument("--priority", type=int, help="peering priority (default: random); the highest is active")
    run.add_argument(
        "--liveness", metavar="URL", help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )
    run.add_argument(
        "--prometheus-url",
        metavar="URL",
        help="Prometheus to read each pool's live p95, throughput, queue, errors and cost from "
        "(status.metrics, SLOMet); without it SLOMet is Unknown",
    )
    run.add_argument(
        "--metrics-window", default="2m", help="rate window of those readings, a Prometheus duration (2m)"
    )
    run.add_argument(
        "--metrics-interval", type=float, default=15.0, help="seconds between rounds of the metrics loop (15)"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve the operator's per-pool gauges (for the alerts) on this port at /metrics; 0: off",
    )
    run.add_argument("--json-logs", action="store_true", help="structured JSON logs")
    run.add_argument("--verbose", "-v", action="store_true", help="debug logs")
    run.set_defaults(func=cmd_run)

    render = sub.add_parser(
        "render", help="print the children of ModelPools as YAML (for GitOps review and kubectl diff)"
    )
    render.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="a YAML file or a folder of them (repeatable)",
    )
    render.add_argument("--namespace", "-n", default="default", help="namespace for pools that name none")
    render.set_defaults(func=cmd_render)

    from tgipool.emulator import cli as emulator_cli

    emulator_cli.add_parser(sub).set_defaults(func=emulator_cli.main)

    from tgipool.gateway import cli as gateway_cli

    gateway_cli.add_parser(sub).set_defaults(func=gateway_cli.main)

    from tgipool.emulator import sim

    sim.add_parser(sub)

    from tgipool.planner.cli import add_parser as add_plan_parser

    add_plan_parser(sub)

    from tgipool.monitoring import cli as monitoring_cli

    monitoring_cli.add_parser(sub)

    from tgipool.doctor import cli as doctor_cli

    doctor_cli.add_parsers(sub)

    crds = sub.add_parser("crds", help="print the CRDs generated from the API models")
    crds.add_argument("--dir", metavar="DIR", help="write one file per CRD into DIR instead of stdout")
    crds.set_defaults(func=cmd_crds)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

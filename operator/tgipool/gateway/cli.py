"""`tgipool gateway --config FILE --port N [--host H]`: route TGI and OpenAI requests to pools of TGI servers.

The configuration file is described in `tgipool.gateway.config`. Send SIGHUP to reload it: pools, endpoints
and tenants change live (in-flight requests, queues and rate-limit buckets are kept); a file that does not
validate is reported and the running configuration stays.
The main CLI wires it with `gateway_cli.add_parser(subparsers)` and dispatches to `gateway_cli.main(args)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any

import uvloop
from prometheus_client import start_http_server

from tgipool.gateway.app import GatewayServer
from tgipool.gateway.cluster_source import ClusterSource
from tgipool.gateway.config import ConfigError, GatewayConfig, load_config
from tgipool.gateway.kube_watch import RESYNC_SECONDS, KubeApi
from tgipool.gateway.wake import Demand

log = logging.getLogger("tgipool.gateway")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `gateway` on the main CLI's `add_subparsers()` object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "gateway",
        help="run the model gateway (routes requests to pools by model, size, load and tenant)",
        description=__doc__,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="gateway configuration YAML (outside Kubernetes)")
    source.add_argument(
        "--modelgateway", metavar="NAME", help="follow this ModelGateway, its pools and their ready pods live"
    )
    parser.add_argument("--namespace", "-n", default="default", help="namespace of the ModelGateway")
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="with --modelgateway: at most one routing-table rebuild per this many seconds (default 1)",
    )
    parser.add_argument(
        "--resync",
        type=float,
        default=RESYNC_SECONDS,
        help=f"with --modelgateway: seconds between full relists (default {RESYNC_SECONDS:g}; "
        "changes arrive by watch)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")  # noqa: S104
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="also serve /metrics without a tenant key on this port, for Prometheus (default 0: off)",
    )
    parser.add_argument("--log-level", default="WARNING", help="Python log level (default WARNING)")
    parser.set_defaults(func=main)
    return parser


def serve_metrics(server: GatewayServer, host: str, port: int) -> None:
    """The gateway's metrics on a port of their own: with tenants, the main port's /metrics needs a
    key (it names tenants), which a cluster's Prometheus does not hold."""
    if port:
        start_http_server(port, addr=host, registry=server.gateway.metrics.registry)


async def serve(config_path: str, config: GatewayConfig, host: str, port: int, metrics_port: int = 0) -> None:
    server = GatewayServer(config, host, port)
    await server.start()
    serve_metrics(server, host, metrics_port)
    print(
        f"tgipool gateway: {len(config.pools)} pool(s), {len(config.tenants)} tenant(s) "
        f"on {host}:{server.port}",
        file=sys.stderr,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        try:
            server.gateway.apply(load_config(config_path))
            log.warning("configuration reloaded from %s", config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, reload)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


async def serve_cluster(args: argparse.Namespace) -> None:
    async with KubeApi.from_environment() as api:
        source = ClusterSource(api, args.namespace, args.modelgateway, args.resync)
        server = GatewayServer(GatewayConfig(), args.host, args.port)
        # Demand for warm and cold pools goes to their Leases, named after this replica (its pod).
        identity = os.environ.get("POD_NAME") or socket.gethostname()
        server.gateway.demand = Demand(api.merge_patch, args.namespace, identity)
        await server.start()
        serve_metrics(server, args.host, args.metrics_port)
        print(
            f"tgipool gateway: following ModelGateway {args.namespace}/{args.modelgateway} "
            f"on {args.host}:{server.port}",
            file=sys.stderr,
        )
        follower = asyncio.create_task(source.follow(server.gateway.apply, args.interval))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            loop.add_signal_handler(signal.SIGINT, stop.set)
        try:
            await stop.wait()
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await server.stop()


def _run(main: Any) -> None:
    """Run on uvloop: its event loop and transports in C halve the loop's share of each request."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=str(args.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.modelgateway:
        with contextlib.suppress(KeyboardInterrupt):
            _run(serve_cluster(args))
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        _run(serve(args.config, config, args.host, args.port, args.metrics_port))
    return 0


if __name__ == "__main__":  # `python -m tgipool.gateway.cli ...` for quick local runs
    _parser = argparse.ArgumentParser(prog="tgipool")
    add_parser(_parser.add_subparsers(dest="command", required=True))
    _args = _parser.parse_args()
    sys.exit(_args.func(_args))

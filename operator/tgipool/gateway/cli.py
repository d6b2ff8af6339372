"""`tgipool gateway --config FILE --port N [--host H]`: route TGI and OpenAI requests to pools of TGI servers.

The configuration file is described in `tgipool.gateway.config`. Send SIGHUP to reload it: pools, endpoints
and tenants change live (in-flight requests, queues and rate-limit buckets are kept); a file that does not
validate is reported and the running configuration stays.
With `--core BIN`, the compiled `tgipool-gateway-core` serves --host/--port in front of this gateway, which
listens on a free loopback port (`core_link.py`); the core is this process's child, stopped with it, and
a core that exits on its own ends the gateway with a non-zero status (its pod restarts).
The main CLI wires it with `gateway_cli.add_parser(subparsers)` and dispatches to `gateway_cli.main(args)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any

import uvloop
from prometheus_client import start_http_server

from tgipool.gateway.app import GatewayServer
from tgipool.gateway.cluster_source import ClusterSource
from tgipool.gateway.config import ConfigError, GatewayConfig, load_config
from tgipool.gateway.kube_watch import RESYNC_SECONDS, KubeApi
from tgipool.gateway.wake import Demand

log = logging.getLogger("tgipool.gateway")
CORE_NAME = "tgipool-gateway-core"
CORE_STOP_SECONDS = 10.0  # the core's drain on SIGTERM, before it is killed


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
    parser.add_argument(
        "--core",
        metavar="BIN",
        help="path of tgipool-gateway-core, or `auto` (the one on PATH; none: Python alone, with a "
        "warning): the core listens on --host/--port and Python on a free loopback port",
    )
    parser.add_argument("--log-level", default="WARNING", help="Python log level (default WARNING)")
    parser.set_defaults(func=main)
    return parser


def serve_metrics(server: GatewayServer, host: str, port: int) -> None:
    """The gateway's metrics on a port of their own: with tenants, the main port's /metrics needs a
    key (it names tenants), which a cluster's Prometheus does not hold."""
    if port:
        start_http_server(port, addr=host, registry=server.gateway.metrics.registry)


def resolve_core(core: str | None) -> str | None:
    """`--core`: a path as given; `auto`: tgipool-gateway-core on PATH, else None (Python alone)."""
    if core != "auto":
        return core
    found = shutil.which(CORE_NAME)
    if found is None:
        log.warning("--core auto: no %s on PATH; the Python gateway serves every request", CORE_NAME)
    return found


def _bind(host: str, port: int, core: str | None) -> tuple[str, int]:
    """Where Python listens: --host/--port, or with a core a free loopback port behind it."""
    return ("127.0.0.1", 0) if core else (host, port)


def _on_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)


async def stop_core(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (the core drains), then SIGKILL after CORE_STOP_SECONDS."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        async with asyncio.timeout(CORE_STOP_SECONDS):
            await proc.wait()
    except TimeoutError:
        log.error("tgipool-gateway-core did not stop within %g s: killed", CORE_STOP_SECONDS)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def until_stopped(stop: asyncio.Event, core: str | None, host: str, port: int, python: int) -> int:
    """Wait for SIGTERM/SIGINT (`stop`): 0. With a core, run it as a child on host:port in front of
    Python's loopback port `python`, stop it first on the way out; 1 when it exits on its own."""
    if core is None:
        await stop.wait()
        return 0
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        proc = await asyncio.create_subprocess_exec(
            core, "--listen", listen, "--python", f"http://127.0.0.1:{python}"
        )
    except OSError as exc:
        log.error("cannot start tgipool-gateway-core %s: %s", core, exc)
        return 1
    print(f"tgipool gateway: core {core} (pid {proc.pid}) on {listen}", file=sys.stderr)
    stopping = asyncio.create_task(stop.wait())
    exited = asyncio.create_task(proc.wait())
    try:
        await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done() and not stop.is_set():  # (a Ctrl-C in a terminal reaches both: a stop)
            log.error("tgipool-gateway-core exited on its own (status %s): stopping", proc.returncode)
            return 1
        return 0
    finally:
        stopping.cancel()
        if proc.returncode is None:
            await stop_core(proc)
        exited.cancel()


async def serve(
    config_path: str,
    config: GatewayConfig,
    host: str,
    port: int,
    metrics_port: int = 0,
    core: str | None = None,
) -> int:
    server = GatewayServer(config, *_bind(host, port, core), core_link=core is not None)
    await server.start()
    serve_metrics(server, host, metrics_port)
    print(
        f"tgipool gateway: {len(config.pools)} pool(s), {len(config.tenants)} tenant(s) "
        f"on {server.host}:{server.port}",
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
    _on_stop_signals(stop)
    try:
        return await until_stopped(stop, core, host, port, server.port)
    finally:
        await server.stop()


async def serve_cluster(args: argparse.Namespace) -> int:
    async with KubeApi.from_environment() as api:
        source = ClusterSource(api, args.namespace, args.modelgateway, args.resync)
        server = GatewayServer(
            GatewayConfig(), *_bind(args.host, args.port, args.core), core_link=args.core is not None
        )
        # Demand for warm and cold pools goes to their Leases, named after this replica (its pod).
        identity = os.environ.get("POD_NAME") or socket.gethostname()
        server.gateway.demand = Demand(api.merge_patch, args.namespace, identity)
        await server.start()
        serve_metrics(server, args.host, args.metrics_port)
        print(
            f"tgipool gateway: following ModelGateway {args.namespace}/{args.modelgateway} "
            f"on {server.host}:{server.port}",
            file=sys.stderr,
        )
        follower = asyncio.create_task(source.follow(server.gateway.apply, args.interval))
        stop = asyncio.Event()
        _on_stop_signals(stop)
        try:
            return await until_stopped(stop, args.core, args.host, args.port, server.port)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await server.stop()


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop: its event loop and transports in C halve the loop's share of each request."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=str(args.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    code = 0
    args.core = resolve_core(args.core)
    if args.modelgateway:
        with contextlib.suppress(KeyboardInterrupt):
            code = _run(serve_cluster(args))
        return code
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        code = _run(serve(args.config, config, args.host, args.port, args.metrics_port, args.core))
    return code


if __name__ == "__main__":  # `python -m tgipool.gateway.cli ...` for quick local runs
    _parser = argparse.ArgumentParser(prog="tgipool")
    add_parser(_parser.add_subparsers(dest="command", required=True))
    _args = _parser.parse_args()
    sys.exit(_args.func(_args))

"""Run-time options of `tgipool run` that handlers read (through kopf's memo), not part of a spec."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunOptions:
    prometheus_url: str | None = None
    metrics_window: str = "2m"
    metrics_interval: float = 15.0
    # The operator's own /metrics (per-pool gauges for the alerts); 0 = not served.
    metrics_port: int = 0
    metrics_address: str = "0.0.0.0"  # noqa: S104 - a pod's metrics port is scraped from outside
    # With --peering: this replica's kopf identity, written before kopf starts (handlers/peering.py),
    # and the namespaces it watches (a namespaced operator peers in each of them).
    peering_identity: str | None = None
    namespaces: tuple[str, ...] = ()

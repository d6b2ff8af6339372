"""Operator-wide settings that are not part of a pool's spec."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OperatorConfig:
    field_manager: str = "tgipool"
    # TGI's image sets HF_HOME=/data; the weight cache is mounted there.
    cache_mount_path: str = "/data"
    # A non-root TGI cannot bind the image's default port 80.
    container_port: int = 8080
    service_port: int = 80
    # TGI drains for 90 s on SIGTERM; give it room to finish.
    termination_grace_seconds: int = 120
    # Weight loading + warm-up can take many minutes: the startup probe allows 30 min.
    startup_probe_failures: int = 180
    shm_size: str = "1Gi"
    prefetch_backoff_limit: int = 4


DEFAULT_CONFIG = OperatorConfig()

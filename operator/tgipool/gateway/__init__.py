"""The model gateway: routes TGI / OpenAI requests to the right pool and endpoint (DESIGN.md section 2)."""

from tgipool.gateway.app import GATEWAY_KEY, GatewayServer, build_app
from tgipool.gateway.config import (
    ConfigError,
    GatewayConfig,
    TenantConfig,
    load_config,
    parse_config,
)
from tgipool.gateway.routing import Endpoint, Pool, RoutingTable
from tgipool.gateway.state import Gateway

__all__ = [
    "GATEWAY_KEY",
    "ConfigError",
    "Endpoint",
    "Gateway",
    "GatewayConfig",
    "GatewayServer",
    "Pool",
    "RoutingTable",
    "TenantConfig",
    "build_app",
    "load_config",
    "parse_config",
]

"""Configuration parsing (errors name the field) and the pure routing rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tgipool.gateway import ConfigError, RoutingTable, load_config, parse_config
from tgipool.gateway.routing import Pool

EXAMPLE = """
defaultPool: short-pool
queueTimeoutSeconds: 5
pools:
- name: short-pool
  servedName: llama3-8b-ru
  maxInputTokens: 2048
  maxTotalTokens: 4096
  maxConcurrentRequests: 128
  priority: 10
  fallbackPool: long-pool
  endpoints: [http://127.0.0.1:9001]
- {name: long-pool, servedName: llama3-8b-ru, profile: long, endpoints: ["http://127.0.0.1:9002/"]}
tenants:
- {name: team-a, apiKey: key-a-0123456, pools: [short-pool], priority: 5, requestsPerMinute: 600,
   tokensPerMinute: 200000}
"""


def test_example_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(EXAMPLE)
    cfg = load_config(path)
    assert cfg.default_pool == "short-pool"
    assert cfg.pools[1].max_input_tokens == 8192 and cfg.pools[1].max_total_tokens == 12288  # long profile
    explicit = parse_config({"pools": [{"name": "p", "profile": "long", "maxInputTokens": 100}]}).pools[0]
    assert (explicit.max_input_tokens, explicit.max_total_tokens) == (100, 12288), "explicit limits win"
    assert cfg.tenants[0].requests_per_minute == 600
    assert "key-a" not in repr(cfg.tenants[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"pools": [{"name": "p", "maxInputTokens": 10, "maxTotalTokens": 20, "endpoint": []}]},
            "pools[0].endpoint",
        ),
        (
            {"pools": [{"name": "p", "maxInputTokens": 20, "maxTotalTokens": 20}]},
            "maxInputTokens (20) must be <",
        ),
        ({"pools": [{"name": "p"}]}, "pools[0]: maxInputTokens and maxTotalTokens are required"),
        (
            {"pools": [{"name": "p", "profile": "huge"}]},
            "pools[0].profile: must be one of short, balanced, long",
        ),
        (
            {"pools": [{"name": "p", "profile": "short", "fallbackPool": "q"}]},
            "pools[0].fallbackPool: no pool",
        ),
        ({"defaultPool": "zz"}, "defaultPool: no pool named 'zz'"),
        ({"pools": [{"name": "p", "profile": "short", "endpoints": ["ftp://x"]}]}, "pools[0].endpoints[0]"),
        ({"queueTimeoutSeconds": -1}, "queueTimeoutSeconds"),
        ({"tenants": [{"name": "t", "apiKey": "short"}]}, "tenants[0].apiKey"),
        ({"tenants": [{"name": "t", "apiKey": "0123456789", "pools": ["x"]}]}, "tenants[0].pools: no pool"),
        (
            {"tenants": [{"name": "t", "apiKey": "0123456789"}, {"name": "u", "apiKey": "0123456789"}]},
            "share an apiKey",
        ),
    ],
)
def test_config_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"pools": [], **change})
    assert message in str(err.value)
    assert "0123456789" not in str(err.value)


def _pools(*specs: tuple[str, int, int, int]) -> list[Pool]:
    table = RoutingTable()
    table.update(
        parse_config(
            {
                "pools": [
                    {"name": n, "servedName": "m", "maxInputTokens": i, "maxTotalTokens": t, "priority": prio}
                    for n, i, t, prio in specs
                ]
            }
        ).pools
    )
    return table.by_model["m"]


def test_routing_rule() -> None:
    pools = _pools(("short", 2048, 4096, 0), ("long", 8192, 12288, 0), ("short-hi", 2048, 4096, 5))
    choose = RoutingTable.choose
    assert choose(pools, {"approx": 100}, 10).pool is pools[2]  # smallest total, tie by priority
    assert choose(pools, {"approx": 100}, None).pool is pools[2]
    assert choose(pools, {"approx": 2048}, None).pool is pools[2]  # input == maxInputTokens fits
    assert choose(pools, {"approx": 2049}, None).pool is pools[1]
    assert choose(pools, {"approx": 2000}, 2096).pool is pools[2]  # exactly 4096
    assert choose(pools, {"approx": 2000}, 2097).pool is pools[1]
    # Fits no pool fully, but TGI accepts (it validates min(max_new_tokens, 1024)): the roomiest pool.
    assert choose(pools, {"approx": 8000}, 5000).pool is pools[1]
    refused = choose(pools, {"approx": 9000}, 5)
    assert refused.pool is None and refused.error == "`inputs` must have less than 8192 tokens. Given: 9000"
    tight = _pools(("tiny", 100, 120, 0), ("small", 100, 110, 0))
    refused = choose(tight, {"approx": 50}, 100)
    assert refused.error == (
        "`inputs` tokens + `max_new_tokens` must be <= 120. "
        "Given: 50 `inputs` tokens and 100 `max_new_tokens`"
    )


def test_update_keeps_endpoints_and_waiters() -> None:
    table = RoutingTable()
    base = {"name": "p", "profile": "short", "endpoints": ["http://127.0.0.1:1", "http://127.0.0.1:2"]}
    table.update(parse_config({"pools": [base]}).pools)
    ep1 = table.endpoints["http://127.0.0.1:1"]
    table.acquire(ep1, 10)
    table.update(
        parse_config({"pools": [{**base, "endpoints": ["http://127.0.0.1:1/", "http://127.0.0.1:3"]}]}).pools
    )
    assert table.endpoints["http://127.0.0.1:1"] is ep1 and ep1.in_flight == 1 and ep1.in_flight_tokens == 10
    assert set(table.endpoints) == {"http://127.0.0.1:1", "http://127.0.0.1:3"}
    table.release(ep1, 10)
    assert ep1.in_flight == 0

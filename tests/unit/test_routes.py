"""The one projection from a pool to a route row, shared by the operator's status and the gateway."""

from __future__ import annotations

from typing import Any

import pytest

from tgipool.api.modelgateway import ModelGateway, RoutePool
from tgipool.api.modelpool import ModelPool
from tgipool.routes import Route, ready_endpoints, route, routes, status_row


def pool(name: str = "p", labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "tgipool.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": name, "namespace": "ml", "labels": labels or {}},
        "spec": {"model": {"id": "org/model"}, **spec},
    }
    doc["spec"]["model"] = {"revision": "a" * 40, **doc["spec"]["model"]}  # prod pools pin a commit
    return doc


def pod(
    pool: str, ip: str | None, ready: bool = True, deleting: bool = False, port: int | None = None
) -> Any:
    meta: dict[str, Any] = {"name": f"{pool}-{ip}", "labels": {"tgipool.io/pool": pool}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    out: dict[str, Any] = {
        "metadata": meta,
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    if ip:
        out["status"]["podIP"] = ip
    if port:
        out["spec"] = {"containers": [{"name": "tgi", "ports": [{"name": "http", "containerPort": port}]}]}
    return out


def gateway(**selector: str) -> ModelGateway:
    return ModelGateway.model_validate(
        {"metadata": {"name": "gw", "namespace": "ml"}, "spec": {"poolSelector": {"matchLabels": selector}}}
    )


# (spec, endpoints, pools in the table) -> the route's fields that the case is about
PROJECTIONS: list[tuple[str, dict[str, Any], list[str], set[str], dict[str, Any]]] = [
    (
        "profile presets",
        {"profile": "short"},
        [],
        set(),
        {"max_input_tokens": 2048, "max_total_tokens": 4096, "max_concurrent_requests": 128},
    ),
    (
        "explicit limits win over the profile",
        {"profile": "long", "limits": {"maxInputTokens": 4000}},
        [],
        set(),
        {"max_input_tokens": 4000, "max_total_tokens": 12288, "max_concurrent_requests": 64},
    ),
    (
        "custom: given limits, the rest balanced",
        {"profile": "custom", "limits": {"maxInputTokens": 100, "maxTotalTokens": 200}},
        [],
        set(),
        {"max_input_tokens": 100, "max_total_tokens": 200, "max_concurrent_requests": 128},
    ),
    ("served name defaults to the pool's", {}, [], set(), {"served_name": "p", "model": "p"}),
    ("served name", {"model": {"id": "org/model", "servedName": "m"}}, [], set(), {"model": "m"}),
    ("priority", {"routing": {"priority": 7}}, [], set(), {"priority": 7}),
    ("fallback in the table", {"routing": {"fallbackPool": "q"}}, [], {"p", "q"}, {"fallback_pool": "q"}),
    ("fallback outside the table", {"routing": {"fallbackPool": "q"}}, [], {"p"}, {"fallback_pool": None}),
    ("fallback to itself", {"routing": {"fallbackPool": "p"}}, [], {"p"}, {"fallback_pool": None}),
    ("environment: prod by default", {}, [], set(), {"environment": "prod"}),
    (
        "adapters by name, as TGI knows them",
        {
            "engine": {
                "loraAdapters": [
                    {"name": "legal", "id": "org/legal-lora", "revision": "v2"},
                    {"name": "med", "id": "/data/med"},
                ]
            }
        },
        [],
        set(),
        {"adapters": {"legal": "org/legal-lora", "med": "med"}},
    ),
    ("overload: spill by default", {}, [], set(), {"overload": "spill", "spare_pool": None}),
    (
        "overload cap",
        {"routing": {"overload": {"policy": "cap", "capMaxNewTokens": 64}}},
        [],
        set(),
        {"overload": "cap", "cap_max_new_tokens": 64},
    ),
    (
        "overload spare in the table",
        {"routing": {"overload": {"policy": "spare", "sparePool": "q"}}},
        [],
        {"p", "q"},
        {"overload": "spare", "spare_pool": "q"},
    ),
    (
        "spare outside the table or environment: spill",
        {"routing": {"overload": {"policy": "spare", "sparePool": "q"}}},
        [],
        {"p": "prod", "q": "staging"},
        {"overload": "spill", "spare_pool": None},
    ),
    (
        "staging, unpinned",
        {"environment": "staging", "model": {"id": "x", "revision": "main"}},
        [],
        set(),
        {"environment": "staging"},
    ),
    (
        "no fallback across environments",
        {"routing": {"fallbackPool": "q"}},
        [],
        {"p": "prod", "q": "staging"},
        {"fallback_pool": None},
    ),
    ("endpoints as given", {}, ["http://10.0.0.1:8080"], set(), {"endpoints": ["http://10.0.0.1:8080"]}),
    (
        "TGI's admission cap holds requests at the gateway",
        {"limits": {"maxConcurrentRequests": 2}},
        [],
        set(),
        {"engine": "tgi", "max_concurrent_requests": 2},
    ),
    (
        "vLLM queues past its batch itself (its HPA scales on that queue)",
        {"engine": {"kind": "vllm"}, "limits": {"maxConcurrentRequests": 2}},
        [],
        set(),
        {"engine": "vllm", "max_concurrent_requests": None},
    ),
]


@pytest.mark.parametrize(
    ("spec", "endpoints", "routed", "expected"), [c[1:] for c in PROJECTIONS], ids=[c[0] for c in PROJECTIONS]
)
def test_route_projects_spec_and_effective_limits(
    spec: dict[str, Any], endpoints: list[str], routed: Any, expected: dict[str, Any]
) -> None:
    envs = routed if isinstance(routed, dict) else dict.fromkeys(routed, "prod")
    r = route(ModelPool.model_validate(pool(**spec)), endpoints, envs)
    assert {k: getattr(r, k) for k in expected} == expected


READY: list[tuple[str, list[Any], list[str]]] = [
    ("ready pod", [pod("p", "10.0.0.1")], ["http://10.0.0.1:8080"]),
    ("not ready", [pod("p", "10.0.0.1", ready=False)], []),
    ("terminating", [pod("p", "10.0.0.1", deleting=True)], []),
    ("no IP yet", [pod("p", None)], []),
    ("another pool's", [pod("q", "10.0.0.1")], []),
    ("the http port", [pod("p", "10.0.0.1", port=9000)], ["http://10.0.0.1:9000"]),
    (
        "sorted",
        [pod("p", "10.0.0.2"), pod("p", "10.0.0.1")],
        ["http://10.0.0.1:8080", "http://10.0.0.2:8080"],
    ),
]


@pytest.mark.parametrize(("pods", "expected"), [c[1:] for c in READY], ids=[c[0] for c in READY])
def test_ready_endpoints(pods: list[Any], expected: list[str]) -> None:
    assert ready_endpoints("p", pods) == expected


def test_routes_select_parse_and_sort() -> None:
    pools = [
        pool("long", {"gw": "a"}, profile="long", model={"id": "x", "servedName": "m"}),
        pool("short", {"gw": "a"}, profile="short", model={"id": "x", "servedName": "m"}),
        pool("code", {"gw": "a"}, profile="short", routing={"fallbackPool": "other"}),
        pool("other", {"gw": "b"}, profile="short"),
        pool("Bad_Name", {"gw": "a"}),  # does not parse: left out
    ]
    rows = routes(gateway(gw="a"), pools, [pod("short", "10.0.0.1"), pod("other", "10.0.0.9")])
    assert [r.name for r in rows] == ["code", "short", "long"]  # by served name, then size
    assert rows[0].fallback_pool is None, "a fallback the gateway does not select is dropped"
    assert rows[1].endpoints == ["http://10.0.0.1:8080"]
    assert [r.name for r in routes(gateway(), pools, [])] == ["code", "short", "long", "other"]


def test_status_row_counts_endpoints() -> None:
    r = Route(
        name="p",
        max_input_tokens=10,
        max_total_tokens=20,
        max_concurrent_requests=4,
        priority=3,
        fallback_pool="q",
        endpoints=["http://10.0.0.1:8080", "http://10.0.0.2:8080"],
    )
    assert status_row(r) == RoutePool(
        name="p",
        served_name="p",
        max_input_tokens=10,
        max_total_tokens=20,
        priority=3,
        fallback_pool="q",
        ready_endpoints=2,
    )

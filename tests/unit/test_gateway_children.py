"""ModelGateway: golden children, least-privilege Role, the config the gateway builds from the cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from tgipool.api.modelgateway import ModelGateway
from tgipool.desired.gateway_children import build_gateway_children, build_role
from tgipool.gateway.cluster_source import build_config

from .conftest import EXAMPLES, load_example

GOLDEN = Path(__file__).parent / "golden" / "gateway.yaml"


def gateway(**spec: Any) -> ModelGateway:
    doc = yaml.safe_load((EXAMPLES / "gateway.yaml").read_text())
    doc["metadata"].update(namespace="ml", uid="gw-uid")
    doc["spec"].update(spec)
    return ModelGateway.model_validate(doc)


def pools() -> list[dict[str, Any]]:
    out = []
    for name in ("llama3-8b-ru-short", "llama3-8b-ru-long", "code-7b", "balanced-awq"):
        doc = load_example(name)
        doc["metadata"]["namespace"] = "ml"
        out.append(doc)
    out[-1]["metadata"]["labels"] = {"tgipool.io/gateway": "other"}
    return out


def pod(pool: str, ip: str, ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"{pool}-{ip}", "labels": {"tgipool.io/pool": pool}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "tgi", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_gateway_children_match_golden() -> None:
    text = yaml.safe_dump_all(
        build_gateway_children(gateway(tenantsSecretRef={"name": "keys"})), sort_keys=False
    )
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_the_core_runs_in_front_unless_python_is_asked_or_tenants_are_configured() -> None:
    def args(**spec: Any) -> list[str]:
        deployment = next(c for c in build_gateway_children(gateway(**spec)) if c["kind"] == "Deployment")
        result: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        return result

    assert args()[-2:] == ["--core", "auto"]
    assert "--core" not in args(dataPlane="python")
    assert "--core" not in args(tenantsSecretRef={"name": "keys"})  # the core would only add a hop


def test_gateway_role_is_least_privilege() -> None:
    role = next(m for m in build_gateway_children(gateway()) if m["kind"] == "Role")
    verbs = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert not any(r == "secrets" for _, r, _ in verbs), "no tenants secret: no secret access"
    assert all(v in {"list", "watch"} for _, _, v in verbs)
    gateways = next(r for r in role["rules"] if r["resources"] == ["modelgateways"])
    assert gateways["resourceNames"] == ["main"], "its own ModelGateway only"
    role = next(
        m for m in build_gateway_children(gateway(tenantsSecretRef={"name": "keys"})) if m["kind"] == "Role"
    )
    secret_rule = next(r for r in role["rules"] if r["resources"] == ["secrets"])
    assert secret_rule == {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["list", "watch"],
        "resourceNames": ["keys"],
    }


def test_gateway_config_follows_ready_pods() -> None:
    pods = [
        pod("llama3-8b-ru-short", "127.1.0.2"),
        pod("llama3-8b-ru-short", "127.1.0.3", ready=False),
        pod("llama3-8b-ru-short", "127.1.0.4", deleting=True),
        pod("code-7b", "127.1.0.9"),
    ]
    cfg = build_config(
        gateway(), pools(), pods, [{"name": "a", "apiKey": "key-aaaaaaaa", "pools": ["code-7b", "balanced"]}]
    )
    by_name = {p.name: p for p in cfg.pools}
    assert set(by_name) == {"llama3-8b-ru-short", "llama3-8b-ru-long", "code-7b"}
    assert by_name["llama3-8b-ru-short"].endpoints == ["http://127.1.0.2:8080"]
    assert by_name["llama3-8b-ru-long"].endpoints == []
    assert by_name["llama3-8b-ru-short"].fallback_pool == "llama3-8b-ru-long"
    assert cfg.default_pool == "llama3-8b-ru-short"
    assert cfg.tenants[0].pools == ["code-7b"], "pools outside the gateway are dropped from a tenant"


def test_gateway_timeouts_come_from_the_spec() -> None:
    cfg = build_config(gateway(), pools(), [], [])
    assert (cfg.connect_timeout_seconds, cfg.response_timeout_seconds) == (2, 600)
    assert (cfg.stream_idle_timeout_seconds, cfg.client_timeout_seconds) == (60, 60)
    timeouts = {
        "connectTimeoutSeconds": 1.5,
        "responseTimeoutSeconds": 1200,
        "streamIdleTimeoutSeconds": 30,
        "clientTimeoutSeconds": 10,
    }
    cfg = build_config(gateway(**timeouts), pools(), [], [])
    assert (cfg.connect_timeout_seconds, cfg.response_timeout_seconds) == (1.5, 1200)
    assert (cfg.stream_idle_timeout_seconds, cfg.client_timeout_seconds) == (30, 10)


def test_the_gateway_may_patch_only_the_demand_leases_of_its_resting_pools() -> None:
    g = gateway(defaultPool="p")
    assert not [r for r in build_role(g)["rules"] if "leases" in r["resources"]]
    (rule,) = [r for r in build_role(g, ["b-demand", "a-demand"])["rules"] if "leases" in r["resources"]]
    assert rule == {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["patch"],
        "resourceNames": ["a-demand", "b-demand"],
    }

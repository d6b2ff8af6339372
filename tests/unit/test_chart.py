"""The Helm chart rendered offline: least-privilege RBAC, the restricted profile, options, the strict values
schema, the CRDs in step with crds/, and the Argo CD health check on statuses the operator computes."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tgipool.api.modelpool import ModelPool
from tgipool.config import DEFAULT_CONFIG
from tgipool.planner import assess
from tgipool.status import Observed, compute_status, gate, invalid_status

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts/tgi-pool"
HEALTH_LUA = CHART / "files/argocd-health-modelpool.lua"
sys.path.insert(0, str(ROOT / "tools"))
import chart_crds  # noqa: E402


@pytest.fixture
def require_helm() -> None:
    # Not a skip: a missing helm must fail the run, not pass it silently.
    assert shutil.which("helm"), (
        "helm is not on PATH: run `make tools` and put `make print-bin` first on PATH"
    )


needs_helm = pytest.mark.usefixtures("require_helm")

# The contract: every resource and verb the operator may call, cluster-wide. A change here is a change
# of what platform teams review; tests/e2e/test_helm.py shows each is needed.
EXPECTED_RULES = {
    ("tgipool.io", "modelpools"): {"get", "list", "watch", "patch"},
    ("tgipool.io", "modelgateways"): {"get", "list", "watch", "patch"},
    ("tgipool.io", "modelpools/status"): {"patch"},
    ("tgipool.io", "modelgateways/status"): {"patch"},
    ("tgipool.io", "modelpools/finalizers"): {"update"},
    ("tgipool.io", "modelgateways/finalizers"): {"update"},
    # delete: children a pool at rest or a new spec no longer asks for (a cold pool keeps only its Lease).
    ("", "persistentvolumeclaims"): {"list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "deployments/scale"): {"patch"},  # 0 -> 1 when a resting pool wakes
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "create", "patch", "delete"},
    ("batch", "jobs"): {"list", "watch", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"list", "watch", "create", "patch", "delete"},
    ("coordination.k8s.io", "leases"): {"list", "watch", "create", "patch", "delete"},
    # spec.routing.inferencePool: true; pruned when turned off.
    ("inference.networking.k8s.io", "inferencepools"): {"list", "watch", "create", "patch", "delete"},
    ("", "serviceaccounts"): {"get", "create", "patch"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "create", "patch"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "create", "patch"},
    ("", "pods"): {"list", "watch"},
    ("", "secrets"): {"list", "watch"},
    ("", "events"): {"create"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}


def helm_template(*args: str, release: str = "r") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["helm", "template", release, str(CHART), "--namespace", "ops", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def render(*sets: str, release: str = "r", values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    args = [a for s in sets for a in ("--set", s)]
    if values is not None:
        args += ["--set-json", *[f"{k}={json.dumps(v)}" for k, v in values.items()]]
    proc = helm_template(*args, release=release)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_chart_crds_are_generated_from_crds_folder() -> None:
    docs = chart_crds.load(sorted((ROOT / "crds").glob("*.yaml")))
    assert {d["metadata"]["name"] for d in docs} >= {"modelpools.tgipool.io", "modelgateways.tgipool.io"}
    assert (CHART / "templates/crds.yaml").read_text() == chart_crds.render(docs), "run make manifests"


def test_escapes_template_delimiters_in_crds() -> None:
    doc = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "xs.example.com", "annotations": {"a": "b"}},
        "spec": {"description": "use {{ .x }} here"},
    }
    text = chart_crds.render([doc])
    assert '{{ "{{" }} .x {{ "}}" }}' in text and "    a: b" in text


@needs_helm
def test_default_rbac_is_exactly_the_contract_and_has_no_wildcard() -> None:
    docs = render()
    (role,) = by_kind(docs, "ClusterRole")
    text = json.dumps(role["rules"])
    assert "*" not in text
    assert grants(role["rules"]) == EXPECTED_RULES
    assert not {"escalate", "bind", "impersonate"} & set().union(*EXPECTED_RULES.values())
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "r-tgi-pool", "namespace": "ops"}]
    assert not by_kind(docs, "Role")


@needs_helm
def test_deployment_is_restricted_single_replica_recreate_with_kopf_liveness() -> None:
    (dep,) = by_kind(render(), "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["args"][:2] == ["run", "--liveness=http://0.0.0.0:8080/healthz"]
    assert not any(a.startswith(("--peering", "--namespace")) for a in c["args"])
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["image"] == "ghcr.io/tgipool/tgipool:0.1.0"


@needs_helm
def test_watch_namespaces_uses_roles_and_no_cluster_wide_grant_on_data() -> None:
    docs = render(values={"watchNamespaces": ["team-a", "team-b"]})
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    expected = {k: v for k, v in EXPECTED_RULES.items() if k[0] != "apiextensions.k8s.io"}
    assert all(grants(r["rules"]) == expected for r in roles)
    assert len(by_kind(docs, "RoleBinding")) == 2
    (crd_reader,) = by_kind(docs, "ClusterRole")
    assert grants(crd_reader["rules"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}
    }
    (dep,) = by_kind(docs, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    off = render("rbac.crdDiscovery=false", values={"watchNamespaces": ["team-a"]})
    assert not by_kind(off, "ClusterRole") and not by_kind(off, "ClusterRoleBinding")


@needs_helm
def test_standby_replicas_use_kopf_peering() -> None:
    docs = render("replicas=2")
    (dep,) = by_kind(docs, "Deployment")
    assert "--peering=r-tgi-pool" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [d["metadata"]["name"] for d in by_kind(docs, "ClusterKopfPeering")] == ["r-tgi-pool"]
    (role,) = by_kind(docs, "ClusterRole")
    assert grants(role["rules"])[("kopf.dev", "clusterkopfpeerings")] == {"list", "watch", "patch"}
    crds = {d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds


@needs_helm
def test_crds_toggle_and_keep_annotation() -> None:
    kept = by_kind(render(), "CustomResourceDefinition")
    assert {d["metadata"]["name"] for d in kept} == {"modelpools.tgipool.io", "modelgateways.tgipool.io"}
    assert all(d["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"} for d in kept)
    assert all(d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm" for d in kept)
    loose = by_kind(render("crds.keep=false"), "CustomResourceDefinition")
    assert all("annotations" not in d["metadata"] for d in loose)
    source = {d["metadata"]["name"]: d["spec"] for d in chart_crds.load((ROOT / "crds").glob("*.yaml"))}
    assert all(d["spec"] == source[d["metadata"]["name"]] for d in loose)
    assert not by_kind(render("crds.enabled=false"), "CustomResourceDefinition")


@needs_helm
def test_names_are_truncated_to_63() -> None:
    release = "r" * 53
    docs = render("replicas=2", release=release, values={"watchNamespaces": ["a"]})
    names = [d["metadata"]["name"] for d in docs]
    assert all(len(n) <= 63 for n in names), [n for n in names if len(n) > 63]
    assert any(n.endswith("-crds") for n in names)
    labels = [v for d in docs for v in (d["metadata"].get("labels") or {}).values()]
    assert all(len(v) <= 63 for v in labels)


@needs_helm
def test_gateway_and_monitors() -> None:
    docs = render(
        "gateway.enabled=true", values={"gateway.spec": {"defaultPool": "p", "replicas": {"min": 2}}}
    )
    (gw,) = by_kind(docs, "ModelGateway")
    assert gw["metadata"]["namespace"] == "ops" and gw["spec"]["replicas"] == {"min": 2}
    assert "post-install" in gw["metadata"]["annotations"]["helm.sh/hook"]
    # Monitors only where the Prometheus Operator's CRDs exist.
    on = ["metrics.podMonitor.enabled=true", "metrics.serviceMonitor.enabled=true"]
    assert not by_kind(render(*on), "PodMonitor") and not by_kind(render(*on), "ServiceMonitor")
    proc = helm_template(
        *[a for s in on for a in ("--set", s)],
        "--api-versions",
        "monitoring.coreos.com/v1/PodMonitor",
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    pm, operator_pm = by_kind(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert operator_pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert len(by_kind(docs, "ServiceMonitor")) == 1


@needs_helm
def test_alerts_dashboard_and_adapter_rules_come_from_the_generated_files() -> None:
    on = ["metrics.prometheusRule.enabled=true", "metrics.grafanaDashboard.enabled=true"]
    on += ["metrics.adapterRules.enabled=true", "metrics.prometheusUrl=http://prom:9090"]
    assert not by_kind(render(*on), "PrometheusRule")  # only where the CRD exists
    proc = helm_template(
        *[a for s in on for a in ("--set", s)], "--api-versions", "monitoring.coreos.com/v1/PrometheusRule"
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    files = CHART / "files"
    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((files / "prometheus-rules.yaml").read_text())
    maps = {m["metadata"]["name"]: m for m in by_kind(docs, "ConfigMap")}
    dash = next(m for name, m in maps.items() if name.endswith("-dashboard"))
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["tgi-pool.json"]) == json.loads(
        (files / "grafana-dashboard.json").read_text()
    )
    adapter = next(m for name, m in maps.items() if name.endswith("-adapter-rules"))
    adapter_values = yaml.safe_load((files / "prometheus-adapter-values.yaml").read_text())
    assert yaml.safe_load(adapter["data"]["config.yaml"]) == {"rules": adapter_values["rules"]["custom"]}
    (dep,) = by_kind(docs, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--prometheus-url=http://prom:9090" in args and "--metrics-window=2m" in args


BAD_VALUES = [
    ("unknown top-level key", ["--set", "replica=2"]),
    ("unknown nested key", ["--set", "crds.kepp=true"]),
    ("wrong type", ["--set-string", "replicas=two"]),
    ("wrong type for a flag", ["--set-string", "crds.enabled=yes"]),
    ("latest tag", ["--set", "image.tag=latest"]),
    ("bad digest", ["--set", "image.digest=abc"]),
    ("bad namespace name", ["--set", "watchNamespaces={Team_A}"]),
    ("bad pull policy", ["--set", "image.pullPolicy=Sometimes"]),
    ("too many replicas", ["--set", "replicas=50"]),
    ("bad interval", ["--set", "metrics.podMonitor.interval=often"]),
    ("gateway name too long", ["--set", f"gateway.name={'g' * 60}"]),
]


@needs_helm
@pytest.mark.parametrize(("why", "args"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_schema_refuses_bad_values(why: str, args: list[str]) -> None:
    proc = helm_template(*args)
    assert proc.returncode != 0, why
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr


# -- Argo CD health check ----------------------------------------------------------------------------


def health(obj: dict[str, Any]) -> dict[str, str]:
    import lupa.lua51 as lupa

    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(HEALTH_LUA.read_text())
    return {"status": str(result["status"]), "message": str(result["message"])}


def obj_with(doc: dict[str, Any], status: dict[str, Any] | None, generation: int = 3) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["metadata"]["generation"] = generation
    if status is not None:
        out["status"] = json.loads(json.dumps(status))
    return out


def job(succeeded: int = 0, failed: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"succeeded": succeeded}
    if failed:
        status["conditions"] = [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": failed}
        ]
    return {"metadata": {"name": "fetch"}, "status": status}


def deployment(replicas: int, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas,
        },
    }


T0 = "2026-01-01T00:00:00Z"


def computed(doc: dict[str, Any], fetch_job: dict[str, Any] | None, observed: Observed) -> dict[str, Any]:
    pool = ModelPool.model_validate(doc)
    gating = gate(pool, fetch_job, assess(pool))
    status = compute_status(pool, observed, gating, DEFAULT_CONFIG, [], T0)
    return status.model_dump(by_alias=True, exclude_none=True)


def test_health_of_statuses_the_operator_computes(short_pool: dict[str, Any]) -> None:
    gen = short_pool["metadata"]["generation"]
    cases = [
        (None, "Progressing", "Waiting for the tgipool operator"),
        (computed(short_pool, job(0), Observed()), "Progressing", "Fetching"),
        (computed(short_pool, job(1), Observed(deployment=deployment(2, 1))), "Progressing", ""),
        (
            computed(short_pool, job(1), Observed(deployment=deployment(2, 2))),
            "Healthy",
            "ReplicasReady",
        ),
        (
            computed(short_pool, job(0, failed="403 from the hub"), Observed()),
            "Degraded",
            "FetchFailed",
        ),
        (
            invalid_status(gen, "spec.replicas.min must be at most spec.replicas.max", [], T0).model_dump(
                by_alias=True, exclude_none=True
            ),
            "Degraded",
            "InvalidSpec",
        ),
    ]
    for status, want, message in cases:
        got = health(obj_with(short_pool, status, generation=gen))
        assert got["status"] == want, (status, got)
        assert message in got["message"], got
    ready = computed(short_pool, job(1), Observed(deployment=deployment(2, 2)))
    stale = health(obj_with(short_pool, ready, generation=gen + 1))
    assert stale["status"] == "Progressing" and "observe generation" in stale["message"]


def test_health_of_idle_tiers(short_pool: dict[str, Any]) -> None:
    cold = {**short_pool, "spec": {**short_pool["spec"], "tier": "cold", "replicas": {"min": 0, "max": 2}}}
    status = computed(cold, None, Observed())
    assert health(obj_with(cold, status, generation=cold["metadata"]["generation"]))["status"] == "Healthy"

"""The Helm chart on a real API server: install under the restricted Pod Security profile, the operator
run with the chart's ServiceAccount identity, RBAC both sufficient and tight, CRD upgrade and keep.

The operator itself runs here as a local process with a token of the chart's ServiceAccount (the
cluster is simulated: the chart's own pod "runs" without an image). While this module runs, the
suite's shared operator (admin credentials, all namespaces) is stopped, so that nothing but the
ServiceAccount's grants reconciles the pools here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .cluster import ROOT, Operator, add_node, condition, get, kubectl, wait_for

sys.path.insert(0, str(ROOT / "tools"))
import chart_crds

CHART = ROOT / "charts/tgi-pool"
HEALTH_LUA = CHART / "files/argocd-health-modelpool.lua"
# An RBAC denial, as the API server words it ("User ... cannot patch resource ..."), or kopf's warning.
# (Not any 403: a namespace being deleted by another test also answers 403 Forbidden.)
FORBIDDEN = re.compile(r"cannot [a-z]+ resource|Not enough permissions")

assert shutil.which("helm"), "helm is not on PATH: run `make tools` and put `make print-bin` first on PATH"


def helm(*args: str, check: bool = True, timeout: float = 180) -> str:
    proc = subprocess.run(["helm", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc.stdout + ("" if check else proc.stderr)


def uninstall_waiting(name: str, ns: str, crds: list[str]) -> None:
    """`helm uninstall --wait`, bounded by helm (150 s, below helm()'s 180 s). It has timed out in CI saying
    only "context deadline exceeded": on a failure, say what was still there (and helm's --debug log)."""
    try:
        helm("uninstall", name, "-n", ns, "--wait", "--timeout", "150s", "--debug")
    except AssertionError as exc:
        kinds = "all,serviceaccounts,roles,rolebindings,events"
        left = kubectl("get", kinds, "-n", ns, "-o", "wide", check=False)
        for crd in crds:
            obj = get("crd", crd)
            if obj is not None:
                meta, status = obj["metadata"], obj.get("status", {})
                left += (
                    f"\ncrd {crd}: deletionTimestamp {meta.get('deletionTimestamp')}, finalizers "
                    f"{meta.get('finalizers')}, conditions {status.get('conditions')}"
                )
        raise AssertionError(f"{exc}\nstill there:\n{left}") from exc


def render(*set_args: str, chart: Path = CHART) -> list[dict[str, Any]]:
    out = helm("template", "r", str(chart), *[a for s in set_args for a in ("--set", s)])
    return [d for d in yaml.safe_load_all(out) if d]


def uid() -> str:
    return uuid.uuid4().hex[:6]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def health(obj: dict[str, Any]) -> dict[str, str]:
    """Runs the Argo CD health check on an object, as Argo CD does (Lua 5.1, `obj` global)."""
    import lupa.lua51 as lupa

    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(HEALTH_LUA.read_text())
    return {"status": str(result["status"]), "message": str(result["message"])}


def sa_kubeconfig(sa: str, ns: str, path: Path) -> Path:
    """A kubeconfig that authenticates as ServiceAccount ns/sa (a bound token), nothing else."""
    token = kubectl("create", "token", sa, "-n", ns, "--duration=2h").strip()
    cfg = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json"))
    cluster = cfg["clusters"][0]["cluster"]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": f"{ns}-{sa}", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "c", "user": f"{ns}-{sa}"}}],
                "current-context": "sa",
            }
        )
    )
    path.chmod(0o600)
    return path


class SAOperator(Operator):
    """`tgipool run` with the chart's ServiceAccount identity and kopf's liveness endpoint."""

    def __init__(self, log_dir: Path, kubeconfig: Path, extra: list[str] | None = None) -> None:
        super().__init__(log_dir)
        self.kubeconfig = kubeconfig
        self.extra = extra or []
        self.port = free_port()

    def start(self) -> None:
        self.log_path = self.log_dir / f"sa-operator-{self.starts}.log"
        self.starts += 1
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        liveness = f"http://127.0.0.1:{self.port}/healthz"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tgipool.cli",
                    "run",
                    "--verbose",
                    "--liveness",
                    liveness,
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
            )

    def healthz(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
            status: int = r.status
            return status


@pytest.fixture(scope="module", autouse=True)
def alone(request: pytest.FixtureRequest, crds: None) -> Iterator[None]:
    """Stops the suite's admin operator for this module, and starts it again afterwards."""
    shared: Operator = request.getfixturevalue("operator")
    shared.stop()
    yield
    shared.start()
    shared.wait_log(r"Starting|started|Resuming|watching", timeout=60)


def restricted_namespace(name: str) -> None:
    kubectl("create", "namespace", name)
    kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")


@pytest.fixture(scope="module")
def release() -> Iterator[dict[str, str]]:
    """The chart installed with its defaults (the CRDs come from the suite's `crds` fixture)."""
    ns = f"helm-{uid()}"
    restricted_namespace(ns)
    name = f"helm-{uid()}"
    helm("install", name, str(CHART), "-n", ns, "--set", "crds.enabled=false", "--wait", "--timeout", "120s")
    yield {"ns": ns, "release": name, "fullname": f"{name}-tgi-pool"}
    helm("uninstall", name, "-n", ns, "--wait", check=False)
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def sa_operator(release: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[SAOperator]:
    tmp = tmp_path_factory.mktemp("helm-operator")
    cfg = sa_kubeconfig(release["fullname"], release["ns"], tmp / "kubeconfig")
    op = SAOperator(tmp, cfg)
    op.start()
    op.wait_log(r"Starting|started|Resuming|watching", timeout=60)
    yield op
    op.stop()


@pytest.fixture(scope="module")
def pools_ns() -> Iterator[str]:
    ns = f"helm-pools-{uid()}"
    kubectl("create", "namespace", ns)
    kubectl("create", "secret", "generic", "hf-token", "--from-literal=token=hf_placeholder", "-n", ns)
    yield ns
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


def wait_all_ready(ns: str, timeout: int = 150) -> list[dict[str, Any]]:
    kubectl(
        "wait",
        "--for=condition=Ready",
        "modelpool",
        "--all",
        "-n",
        ns,
        f"--timeout={timeout}s",
        timeout=timeout + 10,
    )
    out: list[dict[str, Any]] = json.loads(kubectl("get", "modelpool", "-n", ns, "-o", "json"))["items"]
    return out


def test_install_runs_under_the_restricted_profile(release: dict[str, str]) -> None:
    """`helm install --wait` returned, in a namespace that enforces the restricted profile."""
    dep = get("deployment", release["fullname"], release["ns"])
    assert dep is not None
    assert dep["status"].get("availableReplicas") == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == release["fullname"]
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # The admission plugin itself refuses what the profile forbids in this namespace.
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": release["ns"]},
        "spec": {
            "containers": [{"name": "c", "image": "busybox:1.36", "securityContext": {"privileged": True}}]
        },
    }
    out = kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert "violates PodSecurity" in out and "restricted" in out


def test_operator_with_the_chart_identity_reconciles_the_examples(
    sa_operator: SAOperator, pools_ns: str
) -> None:
    # Nodes for the GPUs the vLLM and SGLang examples name (the local cluster has H100s only).
    products = {
        d["spec"]["gpu"]["product"]
        for f in sorted((ROOT / "examples").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if isinstance(d, dict) and d.get("kind") == "ModelPool" and "product" in d["spec"].get("gpu", {})
    }
    extra = [p for p in sorted(products) if not p.startswith("NVIDIA-H100")]
    for product in extra:
        add_node(f"helm-{product.lower()}", 8, product)
    try:
        _reconcile_the_examples(sa_operator, pools_ns)
    finally:
        for product in extra:
            kubectl("delete", "node", f"helm-{product.lower()}", "--wait=false", check=False)


def _reconcile_the_examples(sa_operator: SAOperator, pools_ns: str) -> None:
    kubectl("apply", "--server-side", "--field-manager=e2e", "-n", pools_ns, "-f", str(ROOT / "examples"))
    pools = wait_all_ready(pools_ns)
    assert len(pools) >= 4
    for p in pools:
        assert p["status"]["phase"] == "Ready", p["status"]
        assert health(p)["status"] == "Healthy", health(p)
        assert get("deployment", p["metadata"]["name"], pools_ns) is not None
    for gw in json.loads(kubectl("get", "modelgateway", "-n", pools_ns, "-o", "json"))["items"]:
        kubectl(
            "wait",
            "--for=condition=Ready",
            f"modelgateway/{gw['metadata']['name']}",
            "-n",
            pools_ns,
            "--timeout=60s",
            timeout=70,
        )
    assert sa_operator.healthz() == 200
    denied = [line for line in sa_operator.log().splitlines() if FORBIDDEN.search(line)]
    assert not denied, "\n".join(denied[:10])


# (api group, resource, verb) removed from the ClusterRole, and the kind of object that then needs it.
REMOVALS = [
    ("apps", "deployments", "patch", "ModelPool"),
    ("", "pods", "watch", "ModelPool"),
    ("tgipool.io", "modelpools/status", "patch", "ModelPool"),
    ("rbac.authorization.k8s.io", "roles", "create", "ModelGateway"),
]


def without(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rule in rules:
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            others = [r for r in rule["resources"] if r != resource]
            if others:
                out.append({**rule, "resources": others})
            verbs = [v for v in rule["verbs"] if v != verb]
            if verbs:
                out.append({**rule, "resources": [resource], "verbs": verbs})
        else:
            out.append(rule)
    return out


def example(kind: str, name: str, ns: str) -> dict[str, Any]:
    for f in sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc["kind"] == kind:
                doc["metadata"] = {**doc["metadata"], "name": name, "namespace": ns}
                return dict(doc)
    raise AssertionError(f"no {kind} in examples/")


@pytest.mark.parametrize(("group", "resource", "verb", "kind"), REMOVALS, ids=str)
def test_removing_one_verb_from_the_cluster_role_breaks_the_operator(
    release: dict[str, str],
    sa_operator: SAOperator,
    pools_ns: str,
    group: str,
    resource: str,
    verb: str,
    kind: str,
) -> None:
    (role,) = [d for d in render("crds.enabled=false") if d["kind"] == "ClusterRole"]
    live = get("clusterrole", release["fullname"])
    assert live is not None
    role["metadata"] = {"name": release["fullname"], "labels": live["metadata"]["labels"]}
    full = yaml.safe_dump(role)
    role["rules"] = without(role["rules"], group, resource, verb)
    assert yaml.safe_dump(role) != full
    name = f"cut-{uid()}"
    kubectl("replace", "-f", "-", input=yaml.safe_dump(role))
    try:
        sa_operator.restart()
        doc = example(kind, name, pools_ns)
        kubectl("apply", "--server-side", "--field-manager=e2e", "-f", "-", input=yaml.safe_dump(doc))
        # The API server's own words, as the operator logs them (kopf for watches, ours for writes).
        sa_operator.wait_log(rf"cannot {verb} resource .{{0,2}}{resource}", timeout=60)
        assert condition(get(kind.lower(), name, pools_ns), "Ready").get("status") != "True"
    finally:
        kubectl("replace", "-f", "-", input=full)
    # With the verb back, the same operator reconciles it: that verb, and only it, was missing.
    sa_operator.restart()
    kubectl(
        "wait",
        "--for=condition=Ready",
        f"{kind.lower()}/{name}",
        "-n",
        pools_ns,
        "--timeout=120s",
        timeout=130,
    )
    kubectl("delete", kind.lower(), name, "-n", pools_ns, "--wait=false")


def renamed_crds(group: str) -> list[dict[str, Any]]:
    """The generated CRDs moved to a throwaway API group, so that this test owns them outright."""
    docs = chart_crds.load(sorted((ROOT / "crds").glob("*.yaml")))
    for d in docs:
        d["spec"]["group"] = group
        names = d["spec"]["names"]
        names.pop("shortNames", None)
        names.pop("categories", None)
        d["metadata"]["name"] = f"{names['plural']}.{group}"
    return docs


def test_upgrade_applies_a_crd_change_and_uninstall_keeps_the_crds(tmp_path: Path) -> None:
    group = f"h{uid()}.tgipool.io"
    chart = tmp_path / "tgi-pool"
    shutil.copytree(CHART, chart)
    crds_file = chart / "templates/crds.yaml"
    docs = renamed_crds(group)
    crd_names = [d["metadata"]["name"] for d in docs]
    crds_file.write_text(chart_crds.render(docs))
    ns, name = f"helm-crd-{uid()}", f"helm-crd-{uid()}"
    restricted_namespace(ns)
    try:
        helm("install", name, str(chart), "-n", ns, "--set", "crds.keep=false", "--wait", "--timeout", "120s")
        for crd in crd_names:
            kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
            got = get("crd", crd)
            assert got is not None
            assert "helm.sh/resource-policy" not in (got["metadata"].get("annotations") or {})

        # A schema change (a new optional field, a printer column) and crds.keep: helm upgrade applies both.
        pool_crd = next(d for d in docs if d["spec"]["names"]["kind"] == "ModelPool")
        version = pool_crd["spec"]["versions"][0]
        version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["costCenter"] = {
            "type": "string",
            "description": "added by the upgrade test",
        }
        version.setdefault("additionalPrinterColumns", []).append(
            {"name": "CostCenter", "type": "string", "jsonPath": ".spec.costCenter"}
        )
        crds_file.write_text(chart_crds.render(docs))
        helm("upgrade", name, str(chart), "-n", ns, "--set", "crds.keep=true", "--wait", "--timeout", "120s")
        got = get("crd", pool_crd["metadata"]["name"])
        assert got is not None
        served = got["spec"]["versions"][0]
        assert "costCenter" in served["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        assert {"name": "CostCenter", "type": "string", "jsonPath": ".spec.costCenter"} in served[
            "additionalPrinterColumns"
        ]
        assert got["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        # The new field is served: the API server keeps it instead of pruning it.
        kubectl("create", "namespace", f"{ns}-p")
        doc = yaml.safe_load((ROOT / "examples/llama3-8b-ru-short.yaml").read_text())
        doc["apiVersion"] = f"{group}/v1alpha1"
        doc["metadata"] = {"name": "kept", "namespace": f"{ns}-p"}
        doc["spec"]["costCenter"] = "ml-42"
        kubectl("apply", "--server-side", "--field-manager=e2e", "-f", "-", input=yaml.safe_dump(doc))

        uninstall_waiting(name, ns, crd_names)
        assert get("deployment", f"{name}-tgi-pool", ns) is None
        for crd in crd_names:
            assert get("crd", crd) is not None, f"{crd} was deleted by helm uninstall despite crds.keep"
        kept = get(f"modelpools.{group}", "kept", f"{ns}-p")
        assert kept is not None and kept["spec"]["costCenter"] == "ml-42"
    finally:
        helm("uninstall", name, "-n", ns, check=False)
        for crd in crd_names:
            kubectl("delete", "crd", crd, "--ignore-not-found", "--wait=false", check=False)
        for n in (ns, f"{ns}-p"):
            kubectl("delete", "namespace", n, "--ignore-not-found", "--wait=false", check=False)


def test_uninstall_without_keep_deletes_the_crds(tmp_path: Path) -> None:
    group = f"h{uid()}.tgipool.io"
    chart = tmp_path / "tgi-pool"
    shutil.copytree(CHART, chart)
    docs = renamed_crds(group)
    (chart / "templates/crds.yaml").write_text(chart_crds.render(docs))
    ns, name = f"helm-crd-{uid()}", f"helm-crd-{uid()}"
    restricted_namespace(ns)
    try:
        helm("install", name, str(chart), "-n", ns, "--set", "crds.keep=false", "--set", "rbac.create=false")
        uninstall_waiting(name, ns, [d["metadata"]["name"] for d in docs])
        for d in docs:
            wait_for(
                f"{d['metadata']['name']} deleted", lambda d=d: get("crd", d["metadata"]["name"]) is None
            )
    finally:
        for d in docs:
            kubectl("delete", "crd", d["metadata"]["name"], "--ignore-not-found", "--wait=false", check=False)
        kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)


def test_namespaced_mode_needs_no_cluster_role(tmp_path: Path) -> None:
    """watchNamespaces: a Role per namespace, no cluster-wide grant, and the operator still reconciles."""
    ns, watched, name = f"helm-ns-{uid()}", f"helm-ns-pools-{uid()}", f"helm-ns-{uid()}"
    restricted_namespace(ns)
    kubectl("create", "namespace", watched)
    try:
        helm(
            "install",
            name,
            str(CHART),
            "-n",
            ns,
            "--set",
            "crds.enabled=false",
            "--set",
            f"watchNamespaces={{{watched}}}",
            "--wait",
            "--timeout",
            "120s",
        )
        assert get("clusterrole", f"{name}-tgi-pool") is None
        crd_reader = get("clusterrole", f"{name}-tgi-pool-crds")
        assert crd_reader is not None
        assert crd_reader["rules"] == [
            {
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "verbs": ["list", "watch"],
            }
        ]
        assert get("role", f"{name}-tgi-pool", watched) is not None
        op = SAOperator(
            tmp_path, sa_kubeconfig(f"{name}-tgi-pool", ns, tmp_path / "kubeconfig"), ["--namespace", watched]
        )
        op.start()
        try:
            doc = yaml.safe_load((ROOT / "examples/llama3-8b-ru-short.yaml").read_text())
            doc["metadata"] = {"name": "scoped", "namespace": watched}
            doc["spec"]["model"].pop("hfTokenSecretRef", None)
            kubectl("apply", "--server-side", "--field-manager=e2e", "-f", "-", input=yaml.safe_dump(doc))
            kubectl(
                "wait",
                "--for=condition=Ready",
                "modelpool/scoped",
                "-n",
                watched,
                "--timeout=120s",
                timeout=130,
            )
            denied = [
                line
                for line in op.log().splitlines()
                if FORBIDDEN.search(line)
                and "namespaces" not in line
                and "customresourcedefinitions" not in line
            ]
            assert not denied, "\n".join(denied[:10])
        finally:
            op.stop(signal.SIGTERM)
    finally:
        helm("uninstall", name, "-n", ns, check=False)
        for n in (ns, watched):
            kubectl("delete", "namespace", n, "--wait=false", check=False)

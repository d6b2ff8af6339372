"""PURE: the children of a ModelGateway: its identity, RBAC, Deployment, Service and HPA."""

from __future__ import annotations

from collections.abc import Sequence

from tgipool.api.modelgateway import GATEWAY_KIND, ModelGateway
from tgipool.api.modelpool import GROUP, VERSION
from tgipool.desired import names
from tgipool.manifest import Manifest

GATEWAY_LABEL = f"{GROUP}/modelgateway"
GATEWAY = "gateway"


def child_name(gw: ModelGateway) -> str:
    return f"{gw.metadata.name}-gateway"


def selector_labels(gw: ModelGateway) -> dict[str, str]:
    return {GATEWAY_LABEL: gw.metadata.name, names.COMPONENT_LABEL: GATEWAY}


def _metadata(gw: ModelGateway) -> Manifest:
    meta: Manifest = {
        "name": child_name(gw),
        "namespace": gw.metadata.namespace,
        "labels": {
            "app.kubernetes.io/name": "tgipool-gateway",
            "app.kubernetes.io/instance": gw.metadata.name,
            "app.kubernetes.io/managed-by": names.MANAGED_BY,
            "app.kubernetes.io/part-of": "tgipool",
            **selector_labels(gw),
        },
    }
    if gw.metadata.uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": GATEWAY_KIND,
                "name": gw.metadata.name,
                "uid": gw.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def build_service_account(gw: ModelGateway) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(gw),
        "automountServiceAccountToken": True,
    }


def build_role(gw: ModelGateway, demand_leases: Sequence[str] = ()) -> Manifest:
    """Exactly what `tgipool gateway --modelgateway` watches: its gateway, the pools, their pods, and
    its tenants Secret (list and watch by name: `fieldSelector=metadata.name=...`); and the demand
    Leases of the warm and cold pools it routes to, which it patches by name to wake them."""
    rules: list[Manifest] = [
        {"apiGroups": [GROUP], "resources": ["modelpools"], "verbs": ["list", "watch"]},
        {
            "apiGroups": [GROUP],
            "resources": ["modelgateways"],
            "verbs": ["list", "watch"],
            "resourceNames": [gw.metadata.name],
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    ]
    ref = gw.spec.tenants_secret_ref
    if ref is not None:
        rules.append(
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "verbs": ["list", "watch"],
                "resourceNames": [ref.name],
            }
        )
    if demand_leases:
        rules.append(
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "verbs": ["patch"],
                "resourceNames": sorted(set(demand_leases)),
            }
        )
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(gw),
        "rules": rules,
    }


def build_role_binding(gw: ModelGateway) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(gw),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": child_name(gw)},
        "subjects": [{"kind": "ServiceAccount", "name": child_name(gw), "namespace": gw.metadata.namespace}],
    }


METRICS_PORT = 9090


def uses_core(gw: ModelGateway) -> bool:
    """The compiled core runs in front unless the spec says python, or tenants are configured: the core
    hands every request of a gateway with tenants to Python, so it would only add a hop."""
    return gw.spec.data_plane == "core" and gw.spec.tenants_secret_ref is None


def build_gateway_deployment(gw: ModelGateway) -> Manifest:
    spec = gw.spec
    health = {"httpGet": {"path": "/health", "port": "http"}}
    container: Manifest = {
        "name": "gateway",
        "image": spec.image,
        "args": [
            "gateway",
            "--modelgateway",
            gw.metadata.name,
            "--namespace",
            gw.metadata.namespace,
            "--host",
            "0.0.0.0",  # noqa: S104  the pod serves the cluster
            "--port",
            str(spec.port),
            "--metrics-port",
            str(METRICS_PORT),
            *(["--core", "auto"] if uses_core(gw) else []),
        ],
        "ports": [
            {"name": "http", "containerPort": spec.port, "protocol": "TCP"},
            # Prometheus scrapes here without a tenant key (see `tgipool gateway --metrics-port`).
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": spec.resources
        or {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "readinessProbe": {**health, "periodSeconds": 5},
        "livenessProbe": {**health, "periodSeconds": 20, "failureThreshold": 6},
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(gw),
        "spec": {
            "selector": {"matchLabels": selector_labels(gw)},
            "template": {
                "metadata": {"labels": _metadata(gw)["labels"]},
                "spec": {
                    "serviceAccountName": child_name(gw),
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                },
            },
        },
    }


def build_gateway_service(gw: ModelGateway) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(gw),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(gw),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_gateway_hpa(gw: ModelGateway) -> Manifest:
    r = gw.spec.replicas
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(gw),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": child_name(gw)},
            "minReplicas": r.min,
            "maxReplicas": max(r.min, r.max or r.min),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": gw.spec.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def build_gateway_children(gw: ModelGateway, demand_leases: Sequence[str] = ()) -> list[Manifest]:
    return [
        build_service_account(gw),
        build_role(gw, demand_leases),
        build_role_binding(gw),
        build_gateway_service(gw),
        build_gateway_deployment(gw),
        build_gateway_hpa(gw),
    ]


def gateway_endpoint(gw: ModelGateway) -> str:
    return f"http://{child_name(gw)}.{gw.metadata.namespace}.svc:80"

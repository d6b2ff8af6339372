"""The Deployment of a pool: its engine's container (desired/engines.py) in a GPU pod."""

from __future__ import annotations

from tgipool.api.modelpool import ModelPool
from tgipool.config import OperatorConfig
from tgipool.desired import names
from tgipool.desired.engines import container_port, render_of
from tgipool.manifest import Manifest
from tgipool.planner import plan

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# A replica's weights in bytes (all shards), from the planner: what one pod loads at start. The
# simulated cluster's `tgipool sim` reads it to make a cold start last as long as loading would.
WEIGHTS_BYTES_ANNOTATION = "tgipool.io/weights-bytes"


def token_env(pool: ModelPool) -> list[Manifest]:
    """HF_TOKEN only from the Secret reference: the value never appears in the manifest."""
    ref = pool.spec.model.hf_token_secret_ref
    if ref is None:
        return []
    return [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def user_env(pool: ModelPool) -> list[Manifest]:
    return [e.model_dump(by_alias=True, exclude_none=True) for e in pool.spec.engine.env]


def _container(pool: ModelPool, cfg: OperatorConfig) -> Manifest:
    engine = render_of(pool)
    port = container_port(pool, cfg)
    gpus = str(pool.spec.engine.num_shard)
    gpu_resource = pool.spec.gpu.resource
    user = pool.spec.pod_template.resources or {}
    requests = {**user.get("requests", {}), gpu_resource: gpus}
    limits = {**user.get("limits", {}), gpu_resource: gpus}
    startup: Manifest = {"httpGet": {"path": engine.startup_path, "port": "http"}}
    # One object when the paths agree: the golden YAML of TGI pools shares it (an anchor), as before.
    ready = (
        startup
        if engine.readiness_path == engine.startup_path
        else {"httpGet": {"path": engine.readiness_path, "port": "http"}}
    )
    container: Manifest = {"name": engine.container, "image": pool.spec.engine.image}
    if engine.command is not None:
        container["command"] = list(engine.command)
    return {
        **container,
        "args": engine.args(pool, cfg),
        "env": [
            {"name": "HF_HOME", "value": cfg.cache_mount_path},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            *engine.env(pool),
            *token_env(pool),
            *user_env(pool),
        ],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "resources": {"requests": requests, "limits": limits},
        "startupProbe": {**startup, "periodSeconds": 10, "failureThreshold": cfg.startup_probe_failures},
        "readinessProbe": {**ready, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "volumeMounts": [
            {"name": "shm", "mountPath": "/dev/shm"},  # noqa: S108  NCCL shared memory
            {"name": "weights", "mountPath": cfg.cache_mount_path, "readOnly": True},
        ],
    }


def _pod_spec(pool: ModelPool, cfg: OperatorConfig) -> Manifest:
    tpl = pool.spec.pod_template
    node_selector = dict(tpl.node_selector)
    if pool.spec.gpu.product:
        node_selector.setdefault(GPU_PRODUCT_LABEL, pool.spec.gpu.product)
    spec: Manifest = {
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": cfg.termination_grace_seconds,
        "containers": [_container(pool, cfg)],
        "tolerations": [
            {"key": pool.spec.gpu.resource, "operator": "Exists", "effect": "NoSchedule"},
            *tpl.tolerations,
        ],
        "volumes": [
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": cfg.shm_size}},
            {
                "name": "weights",
                "persistentVolumeClaim": {"claimName": names.cache_name(pool), "readOnly": True},
            },
        ],
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    optional = {
        "affinity": tpl.affinity,
        "priorityClassName": tpl.priority_class_name,
        "serviceAccountName": tpl.service_account_name,
        "runtimeClassName": tpl.runtime_class_name,
        "securityContext": tpl.security_context,
        "imagePullSecrets": tpl.image_pull_secrets or None,
        "topologySpreadConstraints": tpl.topology_spread_constraints or None,
    }
    spec.update({k: v for k, v in optional.items() if v is not None})
    return spec


def _pod_annotations(pool: ModelPool, cfg: OperatorConfig) -> dict[str, str]:
    out = {
        **pool.spec.pod_template.annotations,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(container_port(pool, cfg)),
        "prometheus.io/path": "/metrics",
    }
    weights = plan(pool).weights_bytes_total  # None when the architecture is unknown
    if weights is not None:
        out[WEIGHTS_BYTES_ANNOTATION] = str(weights)
    return out


def build_deployment(pool: ModelPool, cfg: OperatorConfig, awake: bool = True) -> Manifest:
    tpl = pool.spec.pod_template
    spec: Manifest = {
        "revisionHistoryLimit": 3,
        # An engine can spend many minutes loading, compiling and warming up.
        "progressDeadlineSeconds": 3600,
        "selector": {"matchLabels": names.selector_labels(pool)},
        # Never drop below the serving floor during a roll; the surge pod needs spare GPUs.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {
            "metadata": {
                "labels": {**tpl.labels, **names.labels(pool)},
                "annotations": _pod_annotations(pool, cfg),
            },
            "spec": _pod_spec(pool, cfg),
        },
    }
    if not awake:
        # A resting pool is at zero, which the HPA cannot hold: the operator owns 0 <-> 1. Awake, the
        # field is left out of the apply: dropping our ownership resets it to 1 (the wake), and from
        # there the HPA owns it.
        spec["replicas"] = 0
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": names.metadata(pool, pool.name),
        "spec": spec,
    }

"""The weight cache of a pool: its PVC and the Job that fills it before any GPU pod starts."""

from __future__ import annotations

from tgipool.api.modelpool import ModelPool
from tgipool.config import OperatorConfig
from tgipool.desired import names
from tgipool.desired.deployment import token_env
from tgipool.desired.engines import render_of
from tgipool.manifest import Manifest


def needs_fetch(pool: ModelPool) -> bool:
    """Pools prefetch (cold ones when they wake); a model given as a path is already in the cache."""
    return not pool.spec.model.id.startswith("/")


def build_cache_pvc(pool: ModelPool, cfg: OperatorConfig) -> Manifest:
    cache = pool.spec.cache
    spec: Manifest = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": names.metadata(pool, names.cache_name(pool), component="weights-cache"),
        "spec": spec,
    }


def _download(
    pool: ModelPool, name: str, repo: str, revision: str | None, env: list[Manifest], cfg: OperatorConfig
) -> Manifest:
    # The engine's own image downloads (engines.py), so the cache holds what that engine reads back.
    command, args = render_of(pool).download(repo, revision)
    return {
        "name": name,
        "image": pool.spec.engine.image,
        "command": command,
        "args": args,
        "env": env,
        "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "16Gi"}},
        "volumeMounts": [{"name": "weights", "mountPath": cfg.cache_mount_path}],
    }


def build_fetch_job(pool: ModelPool, cfg: OperatorConfig) -> Manifest:
    spec = pool.spec
    env = [
        {"name": "HF_HOME", "value": cfg.cache_mount_path},
        *({"name": k, "value": v} for k, v in render_of(pool).fetch_env),
        *token_env(pool),
    ]
    adapters = [a for a in spec.engine.lora_adapters if not a.id.startswith("/")]
    init = [_download(pool, f"adapter-{i}", a.id, a.revision, env, cfg) for i, a in enumerate(adapters)]
    pod: Manifest = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "containers": [_download(pool, "model", spec.model.id, spec.model.revision, env, cfg)],
        "volumes": [{"name": "weights", "persistentVolumeClaim": {"claimName": names.cache_name(pool)}}],
    }
    if init:
        pod["initContainers"] = init
    tpl = spec.pod_template
    if tpl.node_selector:
        pod["nodeSelector"] = dict(tpl.node_selector)
    if tpl.tolerations:
        pod["tolerations"] = list(tpl.tolerations)
    if tpl.image_pull_secrets:
        pod["imagePullSecrets"] = list(tpl.image_pull_secrets)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": names.metadata(pool, names.fetch_job_name(pool), component=names.FETCH),
        "spec": {
            "backoffLimit": cfg.prefetch_backoff_limit,
            "template": {"metadata": {"labels": names.labels(pool, names.FETCH)}, "spec": pod},
        },
    }

"""The weight cache of a pool: its PVC and the Job that fills it before any GPU pod starts."""

from __future__ import annotations

from tgipool.api.modelpool import ModelPool
from tgipool.config import OperatorConfig
from tgipool.desired import names
from tgipool.desired.deployment import token_env
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
    name: str, image: str, repo: str, revision: str | None, env: list[Manifest], cfg: OperatorConfig
) -> Manifest:
    # The image's entrypoint is the launcher; call TGI's own downloader, which also converts
    # .bin to safetensors so that serving pods never need to write.
    args = ["download-weights", repo]
    if revision:
        args += ["--revision", revision]
    return {
        "name": name,
        "image": image,
        "command": ["text-generation-server"],
        "args": args,
        "env": env,
        "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "16Gi"}},
        "volumeMounts": [{"name": "weights", "mountPath": cfg.cache_mount_path}],
    }


def build_fetch_job(pool: ModelPool, cfg: OperatorConfig) -> Manifest:
    spec = pool.spec
    env = [
        {"name": "HF_HOME", "value": cfg.cache_mount_path},
        {"name": "HF_HUB_ENABLE_HF_TRANSFER", "value": "1"},
        *token_env(pool),
    ]
    adapters = [a for a in spec.engine.lora_adapters if not a.id.startswith("/")]
    init = [
        _download(f"adapter-{i}", spec.engine.image, a.id, a.revision, env, cfg)
        for i, a in enumerate(adapters)
    ]
    pod: Manifest = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "containers": [_download("model", spec.engine.image, spec.model.id, spec.model.revision, env, cfg)],
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

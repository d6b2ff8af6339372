"""The one table of how each engine runs in a pod: container, command line, port, probes, env, and how
the prefetch Job downloads weights with the engine's own image. Nothing else names an engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tgipool.api.engine import EngineKind
from tgipool.api.modelpool import ModelPool
from tgipool.config import OperatorConfig
from tgipool.desired import sglang_args, vllm_args
from tgipool.desired.tgi_args import tgi_args
from tgipool.manifest import Manifest

# Any image with Python and huggingface_hub (vLLM's and SGLang's) fills the cache the way the engine
# reads it back offline: `python3 -c SCRIPT repo [revision]`.
SNAPSHOT_SCRIPT = (
    "import sys; from huggingface_hub import snapshot_download; "
    "snapshot_download(sys.argv[1], revision=sys.argv[2] if len(sys.argv) > 2 else None)"
)


def _tgi_download(repo: str, revision: str | None) -> tuple[list[str], list[str]]:
    # TGI's own downloader also converts .bin to safetensors, so that serving pods never write.
    args = ["download-weights", repo]
    if revision:
        args += ["--revision", revision]
    return ["text-generation-server"], args


def _hub_download(repo: str, revision: str | None) -> tuple[list[str], list[str]]:
    return ["python3", "-c", SNAPSHOT_SCRIPT], [repo, *([revision] if revision else [])]


@dataclass(frozen=True)
class EngineRender:
    app_name: str  # app.kubernetes.io/name of the pool's objects
    container: str  # the serving container's name
    command: list[str] | None  # None: the image's entrypoint
    args: Callable[[ModelPool, OperatorConfig], list[str]]
    port: Callable[[OperatorConfig], int]
    startup_path: str
    readiness_path: str
    env: Callable[[ModelPool], list[Manifest]]  # engine-specific env, before the token and the user's
    download: Callable[[str, str | None], tuple[list[str], list[str]]]  # (repo, revision) -> command, args
    fetch_env: tuple[tuple[str, str], ...] = ()  # extra env of the prefetch Job


ENGINE_RENDER: dict[EngineKind, EngineRender] = {
    "tgi": EngineRender(
        app_name="text-generation-inference",
        container="tgi",
        command=None,
        args=tgi_args,
        port=lambda cfg: cfg.container_port,
        startup_path="/health",
        readiness_path="/health",
        env=lambda pool: [
            {"name": "NUM_SHARD", "value": str(pool.spec.engine.num_shard)},
            {"name": "USAGE_STATS", "value": "off"},
        ],
        download=_tgi_download,
        fetch_env=(("HF_HUB_ENABLE_HF_TRANSFER", "1"),),
    ),
    "vllm": EngineRender(
        app_name="vllm",
        container="vllm",
        command=["vllm", "serve"],
        args=lambda pool, cfg: vllm_args.vllm_args(pool),
        port=lambda cfg: vllm_args.PORT,
        startup_path="/health",
        readiness_path="/health",
        env=lambda pool: [{"name": "VLLM_NO_USAGE_STATS", "value": "1"}],
        download=_hub_download,
    ),
    "sglang": EngineRender(
        app_name="sglang",
        container="sglang",
        command=["python3", "-m", "sglang.launch_server"],
        args=lambda pool, cfg: sglang_args.sglang_args(pool),
        port=lambda cfg: sglang_args.PORT,
        startup_path="/health",
        # /health_generate runs one token through the scheduler (or answers at once when it is busy).
        readiness_path="/health_generate",
        env=lambda pool: [],
        download=_hub_download,
    ),
}


def render_of(pool: ModelPool) -> EngineRender:
    return ENGINE_RENDER[pool.spec.engine.kind]


def container_port(pool: ModelPool, cfg: OperatorConfig) -> int:
    return render_of(pool).port(cfg)

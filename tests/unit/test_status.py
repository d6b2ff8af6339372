"""Status computation from observed children: phases, reasons and transition times."""

from __future__ import annotations

from typing import Any

from tgipool.api.modelpool import ModelPool
from tgipool.config import DEFAULT_CONFIG
from tgipool.planner import assess
from tgipool.status import Observed, Refused, compute_status, gate, invalid_status, must_write_now

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def pool(doc: dict[str, Any]) -> ModelPool:
    return ModelPool.model_validate(doc)


def status(
    p: ModelPool,
    fetch_job: dict[str, Any] | None = None,
    previous: list[dict[str, Any]] | None = None,
    now: str = T0,
    refused: Refused | None = None,
    **observed: Any,
) -> dict[str, Any]:
    """The status the operator writes, decided the way the handler decides it."""
    gating = gate(p, fetch_job, assess(p))
    new = compute_status(p, Observed(**observed), gating, DEFAULT_CONFIG, previous or [], now, refused)
    return new.model_dump(by_alias=True, exclude_none=True)


def job(succeeded: int = 0, failed_message: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"succeeded": succeeded}
    if failed_message:
        status["conditions"] = [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": failed_message}
        ]
    return {"metadata": {"name": "fetch"}, "status": status}


def deployment(replicas: int, ready: int, updated: int | None = None, gen: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": gen},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": gen,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
        },
    }


def conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_ready_when_min_replicas_ready(short_pool: dict[str, Any]) -> None:
    s = status(pool(short_pool), job(1), deployment=deployment(2, 2))
    c = conds(s)
    assert s["phase"] == "Ready" and s["ready"] == "2/2" and s["observedGeneration"] == 3
    assert c["Ready"]["status"] == "True" and c["Ready"]["reason"] == "ReplicasReady"
    assert c["Progressing"]["status"] == "False" and c["Degraded"]["status"] == "False"
    assert c["WeightsCached"]["reason"] == "Fetched"
    assert all(x["observedGeneration"] == 3 for x in s["conditions"])
    assert s["selector"] == "tgipool.io/pool=llama3-8b-ru-short,app.kubernetes.io/component=inference-server"
    assert s["endpoint"] == "http://llama3-8b-ru-short.ml.svc:80"


def test_fetching_then_failed(short_pool: dict[str, Any]) -> None:
    s = status(pool(short_pool), job(0))
    assert s["phase"] == "FetchingWeights"
    assert conds(s)["Ready"]["reason"] == "FetchingWeights"
    s = status(pool(short_pool), job(0, "401 gated repo"))
    c = conds(s)
    assert s["phase"] == "Degraded"
    assert c["Degraded"]["reason"] == "FetchFailed" and "401 gated repo" in c["Degraded"]["message"]
    assert c["Progressing"]["status"] == "False"


def test_gating_is_decided_once(short_pool: dict[str, Any]) -> None:
    p = pool(short_pool)
    assert gate(p, job(1), assess(p)).deploy
    assert not gate(p, job(0), assess(p)).deploy, "weights still downloading"
    short_pool["spec"]["model"]["architecture"]["parametersB"] = 70.6
    big = pool(short_pool)
    assert not gate(big, job(1), assess(big)).deploy, "the planner refuses it"


def test_insufficient_gpu_is_named(short_pool: dict[str, Any]) -> None:
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": (
                        "0/6 nodes are available: 5 Insufficient nvidia.com/gpu, "
                        "1 node(s) didn't match selector."
                    ),
                }
            ]
        },
    }
    s = status(pool(short_pool), job(1), deployment=deployment(2, 0), pods=[pod])
    c = conds(s)
    assert s["phase"] == "Degraded"
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "InsufficientGPU"
    assert (
        "Insufficient nvidia.com/gpu" in c["Ready"]["message"] and "1 nvidia.com/gpu" in c["Ready"]["message"]
    )


def test_rolling_out_is_progressing_but_still_ready(short_pool: dict[str, Any]) -> None:
    s = status(pool(short_pool), job(1), deployment=deployment(2, 2, updated=1))
    c = conds(s)
    assert c["Ready"]["status"] == "True" and c["Progressing"]["reason"] == "RollingOut"
    assert s["phase"] == "Progressing"


def test_transition_time_moves_only_on_flip(short_pool: dict[str, Any]) -> None:
    p = pool(short_pool)
    first = status(p, job(1), deployment=deployment(2, 1))
    same = status(p, job(1), first["conditions"], T1, deployment=deployment(2, 1))
    assert conds(same)["Ready"]["lastTransitionTime"] == T0
    flipped = status(p, job(1), same["conditions"], T1, deployment=deployment(2, 2))
    assert conds(flipped)["Ready"]["lastTransitionTime"] == T1
    assert conds(flipped)["WeightsCached"]["lastTransitionTime"] == T0


def test_warm_at_zero_is_standby(short_pool: dict[str, Any]) -> None:
    short_pool["spec"].update(tier="warm", replicas={"min": 0, "max": 2})
    s = status(pool(short_pool), job(1), deployment=deployment(0, 0))
    assert s["phase"] == "Standby" and conds(s)["Ready"]["reason"] == "ScaledToZero"


def test_invalid_status_names_the_field() -> None:
    s = invalid_status(4, "spec.engine.numShard: must be <= 8", [], T0).model_dump(by_alias=True)
    c = conds(s)
    assert s["phase"] == "Invalid" and s["observedGeneration"] == 4
    assert c["Ready"]["reason"] == "InvalidSpec" and "numShard" in c["Ready"]["message"]


def test_refused_write_is_an_input_not_an_afterthought(short_pool: dict[str, Any]) -> None:
    p = pool(short_pool)
    ready = status(p, job(1), deployment=deployment(2, 2))
    why = Refused("ApplyRefused", "the API server refused Deployment x: 403 forbidden")
    s = status(p, job(1), ready["conditions"], T1, why, deployment=deployment(2, 2))
    c = conds(s)
    assert s["phase"] == "Degraded"
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("True", "ApplyRefused")
    assert c["Degraded"]["lastTransitionTime"] == T1, "Degraded flipped"
    assert c["Ready"] == conds(ready)["Ready"], "the pods still serve"


def test_capacity_refusal_outranks_everything(short_pool: dict[str, Any]) -> None:
    short_pool["spec"]["model"]["architecture"] = {
        "numLayers": 80,
        "numKeyValueHeads": 8,
        "headDim": 128,
        "parametersB": 70.6,
    }
    p = pool(short_pool)
    assert assess(p).refused
    s = status(p, job(1))
    c = conds(s)
    assert s["phase"] == "Infeasible"
    assert c["CapacityFeasible"]["status"] == "False" and c["CapacityFeasible"]["reason"] == "WeightsDoNotFit"
    assert c["Ready"]["reason"] == "WeightsDoNotFit" and "numShard" in c["Ready"]["message"]
    assert s["capacity"]["weightsBytes"] > 80 * 2**30


def test_capacity_fits_is_reported(short_pool: dict[str, Any]) -> None:
    s = status(pool(short_pool), job(1), deployment=deployment(2, 2))
    assert conds(s)["CapacityFeasible"]["status"] == "True" and s["phase"] == "Ready"
    assert s["capacity"] == {
        "kvBytesPerToken": 131072,
        "weightsBytes": 16_000_000_000,
        "maxConcurrentSequences": 113,
    }


def test_unknown_architecture_is_unknown_not_true(short_pool: dict[str, Any]) -> None:
    del short_pool["spec"]["model"]["architecture"]
    s = status(pool(short_pool), job(1), deployment=deployment(2, 2))
    assert conds(s)["CapacityFeasible"]["status"] == "Unknown"
    assert s["phase"] == "Ready"


def model(p: ModelPool, **kw: Any) -> Any:
    """The status model itself (what `Writer.write_status` is handed)."""
    gating = gate(p, kw.pop("fetch_job", None), assess(p))
    return compute_status(p, Observed(**kw), gating, DEFAULT_CONFIG, [], T0)


def test_a_bare_count_or_message_may_wait_but_a_turn_may_not(short_pool: dict[str, Any]) -> None:
    p = pool(short_pool)
    rolling = status(p, job(1), deployment=deployment(2, 0, updated=1))
    scaling = model(p, fetch_job=job(1), deployment=deployment(2, 0))
    assert (
        conds(rolling)["Progressing"]["reason"]
        != conds(scaling.model_dump(by_alias=True))["Progressing"]["reason"]
    )
    assert not must_write_now(scaling, rolling), "RollingOut -> ScalingUp: same phase, nothing turned"
    assert must_write_now(model(p, fetch_job=job(1), deployment=deployment(2, 2)), rolling), "Ready turned"
    fetched = status(p, job(1))
    assert must_write_now(model(p, fetch_job=job(0)), fetched), "WeightsCached turned back"
    assert must_write_now(scaling, {}), "the first status"
    older = {**status(p, job(1), deployment=deployment(2, 0)), "observedGeneration": 2}
    assert must_write_now(scaling, older), "a newly handled generation"

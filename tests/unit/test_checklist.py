"""The production checklist: each item met and missing, ProductionReady and status.checklist, the gateways
that route a pool, and what stays while Prometheus cannot be read."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tgipool import checklist
from tgipool.api.modelpool import MetricsStatus, ModelPool, ModelPoolSpec
from tgipool.checklist import Facts, image_pin, production_ready, routed_by
from tgipool.config import DEFAULT_CONFIG
from tgipool.monitoring.readings import NO_PROMETHEUS, Reading
from tgipool.planner import assess
from tgipool.status import Observed, compute_status, gate

ALERTS = frozenset({"tgipool.records", "tgipool.alerts"})
MEASURED = MetricsStatus(tokens_per_second=1000.0, cost_per_million_tokens=1.3833, observed_at="T1")
ROUTED = {"main": frozenset({"llama3-8b-ru-short", "llama3-8b-ru-long"})}


def reading(groups: frozenset[str] | None = ALERTS, error: str | None = None) -> Reading:
    return Reading(values={}, observed_at="T1", error=error, rule_groups=groups)


def items(doc: dict[str, Any], **kw: Any) -> dict[str, checklist.ChecklistItem]:
    pool = ModelPool.model_validate(doc)
    facts = kw.pop("facts", Facts(routed_by=ROUTED))
    out = checklist.items(pool, kw.pop("metrics", MEASURED), kw.pop("reading", reading()), facts)
    return {i.item: i for i in out}


def test_a_pool_with_everything_is_production_ready(short_pool: dict[str, Any]) -> None:
    doc = copy.deepcopy(short_pool)
    doc["spec"]["limits"] = {"maxTotalTokens": 4096}
    got = items(doc)
    assert list(got) == list(checklist.ITEMS)
    assert all(i.ok for i in got.values()), [i for i in got.values() if not i.ok]
    assert got["in a gateway"].detail == "routed by ModelGateway main"
    assert got["rates and cost measured"].detail == "1000 tokens/s, $1.3833 per 1M tokens (status.metrics)"
    assert got["fallback configured"].detail == "spills to llama3-8b-ru-long on overload"
    ok, reason, message = production_ready(list(got.values()))
    assert (ok, reason) == (True, "ChecklistComplete") and "all 8 items" in message


def unpinned(spec: dict[str, Any], field: str, **values: str) -> None:
    """An unpinned revision or image: prod pools refuse them at apply time (spec.environment, where the
    API has it), staging pools may run them and the checklist says what is missing."""
    spec[field].update(values)
    if "environment" in ModelPoolSpec.model_fields:
        spec["environment"] = "staging"


@pytest.mark.parametrize(
    ("change", "item", "words"),
    [
        (lambda s: s["slo"].clear(), "SLO set", "the short profile's 3000 ms is only implied"),
        (lambda s: s.pop("limits", None), "limits set", "the short profile gives 4096"),
        (
            lambda s: s["routing"].pop("fallbackPool"),
            "fallback configured",
            "spec.routing.fallbackPool is unset",
        ),
        (lambda s: unpinned(s, "model", revision="main"), "revision pinned", "'main' is a branch or tag"),
        (
            lambda s: unpinned(s, "engine", image="ghcr.io/huggingface/text-generation-inference:nightly"),
            "image pinned",
            "has no version tag or digest",
        ),
        (lambda s: s["gpu"].pop("hourlyPrice"), "rates and cost measured", "spec.gpu.hourlyPrice is unset"),
    ],
)
def test_each_spec_item_missing(short_pool: dict[str, Any], change: Any, item: str, words: str) -> None:
    doc = copy.deepcopy(short_pool)
    doc["spec"]["limits"] = {"maxTotalTokens": 4096}
    change(doc["spec"])
    metrics = None if item == "rates and cost measured" else MEASURED
    got = items(doc, metrics=metrics)
    assert not got[item].ok and words in got[item].detail, got[item]
    assert [i for i, v in got.items() if not v.ok] == [item]
    ok, reason, message = production_ready(list(got.values()))
    assert (ok, reason) == (False, "ChecklistIncomplete")
    assert message.startswith(f"1 of 8 missing: {item}: ")


def test_not_in_a_gateway_and_a_fallback_the_gateway_does_not_route(short_pool: dict[str, Any]) -> None:
    got = items(short_pool, facts=Facts())
    assert (
        not got["in a gateway"].ok
        and "no ModelGateway in namespace ml selects this pool" in got["in a gateway"].detail
    )
    assert got[
        "fallback configured"
    ].ok  # nothing routes it yet: the fallback cannot be judged against a table
    got = items(short_pool, facts=Facts(routed_by={"main": frozenset({"llama3-8b-ru-short"})}))
    assert not got["fallback configured"].ok
    assert "not in the routing table of ModelGateway main" in got["fallback configured"].detail


def test_alerts_installed_known_missing_and_unknown(short_pool: dict[str, Any]) -> None:
    assert items(short_pool)["alerts installed"].ok
    missing = items(short_pool, reading=reading(frozenset({"tgipool.records"})))["alerts installed"]
    assert not missing.ok and "no rule group tgipool.alerts" in missing.detail
    for r, why in [
        (None, "no metrics loop"),
        (reading(None, NO_PROMETHEUS), "no metrics loop"),
        (reading(None), "did not list its rules"),
        (reading(None, "ConnectionError: refused"), "Prometheus cannot be read"),
    ]:
        got = items(short_pool, reading=r)["alerts installed"]
        assert not got.ok and got.detail.startswith("unknown: ") and why in got.detail, (r, got)


def test_measured_rates_stay_once_measured_and_through_an_outage(short_pool: dict[str, Any]) -> None:
    first = items(short_pool)
    previous = [i.model_dump(by_alias=True) for i in first.values()]
    # Idle: no tokens now, but the pilot was measured.
    idle = items(short_pool, metrics=MetricsStatus(tokens_per_second=0.0), facts=Facts(ROUTED, previous))
    assert idle["rates and cost measured"] == first["rates and cost measured"]
    # Never measured: a pilot load is asked for.
    never = items(short_pool, metrics=None)["rates and cost measured"]
    assert not never.ok and "run a pilot load" in never.detail
    # Prometheus down: every item it feeds keeps what it last said (no write per failed round).
    down = items(
        short_pool, metrics=None, reading=reading(None, "ConnectionError: x"), facts=Facts(ROUTED, previous)
    )
    assert down == first


def test_local_path_models_and_image_pins(short_pool: dict[str, Any]) -> None:
    doc = copy.deepcopy(short_pool)
    doc["spec"]["model"]["id"] = "/data/models/llama"
    assert items(doc)["revision pinned"].ok
    assert image_pin("ghcr.io/huggingface/text-generation-inference:3.3.6") == "3.3.6"
    assert image_pin("tgi:v2.4.1-rocm") == "v2.4.1-rocm"
    assert image_pin("tgi:sha-1234abc") == "sha-1234abc"
    assert image_pin("tgi@sha256:" + "a" * 64) == "digest"
    for moving in ("tgi:nightly", "tgi:3", "registry:5000/tgi", "tgi:latest-gpu"):
        assert image_pin(moving) is None, moving


def gateway(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "tgipool.io/v1alpha1",
        "kind": "ModelGateway",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"poolSelector": {"matchLabels": labels}},
    }


def test_routed_by_follows_the_gateways_pool_selectors() -> None:
    def pool(name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "ml", "labels": labels}}

    short, long_, other = pool("short", {"gw": "a"}), pool("long", {"gw": "a"}), pool("other", {})
    gws = [
        gateway("a", {"gw": "a"}),
        gateway("b", {"gw": "b"}),
        gateway("all", {}),
        {"metadata": {"name": "bad"}},
    ]
    got = routed_by(short, gws, [short, long_, other])
    assert got == {"a": frozenset({"short", "long"}), "all": frozenset({"short", "long", "other"})}
    assert routed_by(other, gws, [short, long_, other]) == {"all": frozenset({"short", "long", "other"})}


def test_status_has_the_checklist_and_production_ready(short_pool: dict[str, Any]) -> None:
    pool = ModelPool.model_validate(short_pool)
    gating = gate(pool, {"status": {"succeeded": 1}, "metadata": {"name": "j"}}, assess(pool))
    new = compute_status(pool, Observed(), gating, DEFAULT_CONFIG, [], "T0", facts=Facts(routed_by=ROUTED))
    status = new.model_dump(by_alias=True, exclude_none=True)
    cond = next(c for c in status["conditions"] if c["type"] == "ProductionReady")
    assert cond["status"] == "False" and cond["reason"] == "ChecklistIncomplete"
    # Without the metrics loop: nothing measured and the alerts unknown; the example sets no explicit limits.
    missing = [i["item"] for i in status["checklist"] if not i["ok"]]
    assert missing == ["limits set", "rates and cost measured", "alerts installed"]
    assert cond["message"].startswith("3 of 8 missing: limits set: spec.limits.maxTotalTokens is unset")
    assert "alerts installed: unknown: the operator runs no metrics loop" in cond["message"]


def test_the_fallback_may_be_a_length_cap_or_a_spare_model(short_pool: dict[str, Any]) -> None:
    def with_overload(**overload: Any) -> dict[str, Any]:
        doc = copy.deepcopy(short_pool)
        doc["spec"]["routing"]["overload"] = overload
        return doc

    got = items(with_overload(policy="cap", capMaxNewTokens=256))["fallback configured"]
    assert got.ok and got.detail == "a saturated pool caps max_new_tokens at 256"
    got = items(with_overload(policy="reject"))["fallback configured"]
    assert not got.ok and "reject answers 429 at once" in got.detail
    spare = with_overload(policy="spare", sparePool="llama3-8b-ru-long")
    got = items(spare)["fallback configured"]
    assert got.ok and got.detail == "serves overload from the spare model's pool llama3-8b-ru-long"
    got = items(spare, facts=Facts(routed_by={"main": frozenset({"llama3-8b-ru-short"})}))[
        "fallback configured"
    ]
    assert not got.ok and got.detail.startswith("sparePool llama3-8b-ru-long is not in the routing table")


def test_a_fallback_in_another_environment_is_not_one() -> None:
    def pool(name: str, env: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "ml", "labels": {}}, "spec": {"environment": env}}

    prod, staging, other = pool("prod-a", "prod"), pool("stage-a", "staging"), {"metadata": {"name": "b"}}
    gws = [gateway("all", {})]
    assert routed_by(prod, gws, [prod, staging, other]) == {"all": frozenset({"prod-a", "b"})}
    assert routed_by(staging, gws, [prod, staging, other]) == {"all": frozenset({"stage-a"})}

"""PURE: the reference page's checklist before production, item by item, checked against the cluster.

Each item says whether the cluster shows it and the evidence, or what to set. `status.py` puts the
list in `status.checklist` and makes the `ProductionReady` condition of it; `tgipool check` prints the
list. The facts the spec alone cannot tell come from the reconcile (`Facts`: the gateways that route
the pool, from the operator's caches) and from the metrics loop (`Reading`: Prometheus' rule groups).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tgipool.api.checklist import ChecklistItem
from tgipool.api.modelgateway import ModelGateway
from tgipool.api.modelpool import MetricsStatus, ModelPool
from tgipool.desired.cache import needs_fetch
from tgipool.manifest import Manifest
from tgipool.monitoring.readings import NO_PROMETHEUS, Reading
from tgipool.monitoring.rules import ALERTS_GROUP
from tgipool.routes import selects

SLO = "SLO set"
LIMITS = "limits set"
GATEWAY = "in a gateway"
MEASURED = "rates and cost measured"
ALERTS = "alerts installed"
FALLBACK = "fallback configured"
REVISION = "revision pinned"
IMAGE = "image pinned"
ITEMS = (SLO, LIMITS, GATEWAY, MEASURED, ALERTS, FALLBACK, REVISION, IMAGE)

COMMIT = re.compile(r"^[0-9a-f]{40}$")
# A release (3.3.6, v2.4.1, 3.3.6-rocm) or a commit build (sha-1234abc); never a moving tag.
VERSION_TAG = re.compile(r"^(v?\d+(\.\d+)+([-+_.][0-9A-Za-z][0-9A-Za-z._-]*)?|sha-[0-9a-f]{7,40})$")
NO_LOOP = "the operator runs no metrics loop (tgipool run --prometheus-url)"


@dataclass(frozen=True)
class Facts:
    """What the reconcile gathers for the checklist from the operator's caches."""

    # The gateways whose routing table holds the pool -> the pools of its environment in that table (those
    # it may spill to).
    routed_by: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # The last status.checklist: rates once measured stay measured while traffic pauses.
    previous: Sequence[Mapping[str, Any]] = ()


def routed_by(
    pool: Manifest, gateways: Iterable[Manifest], pools: Iterable[Manifest]
) -> dict[str, frozenset[str]]:
    """The namespace's gateways that select `pool` (routes.selects, as their routing tables do), each with
    the names of the pools it selects in the pool's environment. Gateways that do not parse route nothing."""
    env = _environment(pool)
    pools = [p for p in pools if _environment(p) == env]
    out: dict[str, frozenset[str]] = {}
    for raw in gateways:
        try:
            gw = ModelGateway.model_validate(raw)
        except ValidationError:
            continue
        if selects(gw, pool):
            out[gw.metadata.name] = frozenset(p["metadata"]["name"] for p in pools if selects(gw, p))
    return out


def _environment(pool: Manifest) -> str:
    return str((pool.get("spec") or {}).get("environment") or "prod")


def _item(item: str, ok: bool, detail: str) -> ChecklistItem:
    return ChecklistItem(item=item, ok=ok, detail=detail)


def _slo(pool: ModelPool) -> ChecklistItem:
    target = pool.spec.slo.p95_latency_ms
    if target is not None:
        return _item(SLO, True, f"spec.slo.p95LatencyMs {target} ms")
    return _item(
        SLO,
        False,
        f"spec.slo.p95LatencyMs is unset (the {pool.spec.profile} profile's {pool.slo_p95_ms} ms is only "
        "implied): fix the objective",
    )


def _limits(pool: ModelPool) -> ChecklistItem:
    total = pool.spec.limits.max_total_tokens
    if total is not None:
        return _item(LIMITS, True, f"spec.limits.maxTotalTokens {total}")
    return _item(
        LIMITS,
        False,
        f"spec.limits.maxTotalTokens is unset (the {pool.spec.profile} profile gives "
        f"{pool.limits.max_total_tokens}): set it explicitly",
    )


def _gateway(pool: ModelPool, facts: Facts) -> ChecklistItem:
    if facts.routed_by:
        return _item(GATEWAY, True, "routed by ModelGateway " + ", ".join(sorted(facts.routed_by)))
    return _item(
        GATEWAY,
        False,
        f"no ModelGateway in namespace {pool.namespace} selects this pool: give it the labels of a "
        "gateway's spec.poolSelector",
    )


def _measured(
    pool: ModelPool, metrics: MetricsStatus | None, reading: Reading | None, facts: Facts
) -> ChecklistItem:
    tps = metrics.tokens_per_second if metrics else None
    cost = metrics.cost_per_million_tokens if metrics else None
    if tps and cost is not None:
        return _item(MEASURED, True, f"{tps:g} tokens/s, ${cost:g} per 1M tokens (status.metrics)")
    before = next((p for p in facts.previous if p.get("item") == MEASURED), None)
    # A pilot measured once stays measured; while Prometheus cannot be read, the last word stands.
    if before is not None and (before.get("ok") or (reading is not None and reading.error is not None)):
        return ChecklistItem.model_validate(before)
    if pool.spec.gpu.hourly_price is None:
        why = "spec.gpu.hourlyPrice is unset: the cost per 1M tokens needs it"
    elif reading is None or reading.error == NO_PROMETHEUS:
        why = NO_LOOP
    elif reading.error is not None:
        why = "Prometheus cannot be read: no measured rates"
    else:
        why = "no generated tokens measured yet (status.metrics.tokensPerSecond): run a pilot load"
    return _item(MEASURED, False, why)


def _alerts(reading: Reading | None, facts: Facts) -> ChecklistItem:
    if reading is not None and reading.error is not None:
        # While Prometheus cannot be read, what it last said stands (as status.metrics does).
        before = next((p for p in facts.previous if p.get("item") == ALERTS), None)
        if before is not None:
            return ChecklistItem.model_validate(before)
    groups = reading.rule_groups if reading is not None else None
    if groups is None:
        if reading is None or reading.error == NO_PROMETHEUS:
            why = NO_LOOP
        elif reading.error is not None:
            why = "Prometheus cannot be read"
        else:
            why = "Prometheus did not list its rules (GET /api/v1/rules)"
        return _item(ALERTS, False, f"unknown: {why}")
    if ALERTS_GROUP in groups:
        return _item(ALERTS, True, f"Prometheus has the rule group {ALERTS_GROUP} loaded")
    return _item(
        ALERTS,
        False,
        f"Prometheus has no rule group {ALERTS_GROUP}: install the chart's PrometheusRule "
        "(metrics.prometheusRule.enabled=true)",
    )


def _fallback(pool: ModelPool, facts: Facts) -> ChecklistItem:
    """The page's fallback for overload: a pool to spill to, a spare model, or a length cap."""
    overload = pool.spec.routing.overload
    if overload.policy == "cap":
        return _item(FALLBACK, True, f"a saturated pool caps max_new_tokens at {overload.cap_max_new_tokens}")
    if overload.policy == "reject":
        return _item(
            FALLBACK,
            False,
            "spec.routing.overload.policy reject answers 429 at once: spill to a fallbackPool, cap "
            "max_new_tokens, or serve a spare model",
        )
    target = overload.spare_pool if overload.policy == "spare" else pool.spec.routing.fallback_pool
    field_name = "sparePool" if overload.policy == "spare" else "fallbackPool"
    if target is None or target == pool.name:
        return _item(
            FALLBACK,
            False,
            "spec.routing.fallbackPool is unset: name a pool of the same model to spill to on overload "
            "(or set spec.routing.overload to cap or spare)",
        )
    missing = sorted(gw for gw, table in facts.routed_by.items() if target not in table)
    if missing:
        return _item(
            FALLBACK,
            False,
            f"{field_name} {target} is not in the routing table of ModelGateway {', '.join(missing)} "
            f"(in environment {pool.spec.environment}): the gateway cannot send overload to it",
        )
    if overload.policy == "spare":
        return _item(FALLBACK, True, f"serves overload from the spare model's pool {target}")
    return _item(FALLBACK, True, f"spills to {target} on overload")


def _revision(pool: ModelPool) -> ChecklistItem:
    if not needs_fetch(pool):
        return _item(REVISION, True, f"the model is a path in the cache: {pool.spec.model.id}")
    revision = pool.spec.model.revision
    if COMMIT.match(revision):
        return _item(REVISION, True, f"spec.model.revision {revision}")
    return _item(
        REVISION,
        False,
        f"spec.model.revision {revision!r} is a branch or tag that can move: pin a commit (40 hex digits)",
    )


def image_pin(image: str) -> str | None:
    """How `image` is pinned ('digest' or its version tag), or None when it can move."""
    if "@sha256:" in image:
        return "digest"
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else None
    return tag if tag and VERSION_TAG.match(tag) else None


def _image(pool: ModelPool) -> ChecklistItem:
    image = pool.spec.engine.image
    pin = image_pin(image)
    if pin is not None:
        return _item(IMAGE, True, f"spec.engine.image {image}")
    return _item(
        IMAGE,
        False,
        f"spec.engine.image {image} has no version tag or digest: pin a release (e.g. :3.3.6) or @sha256",
    )


def items(
    pool: ModelPool, metrics: MetricsStatus | None, reading: Reading | None, facts: Facts
) -> list[ChecklistItem]:
    """The checklist, in the page's order."""
    return [
        _slo(pool),
        _limits(pool),
        _gateway(pool, facts),
        _measured(pool, metrics, reading, facts),
        _alerts(reading, facts),
        _fallback(pool, facts),
        _revision(pool),
        _image(pool),
    ]


def production_ready(checklist: Sequence[ChecklistItem]) -> tuple[bool, str, str]:
    """(status, reason, message) of the ProductionReady condition: the missing items in its message."""
    missing = [i for i in checklist if not i.ok]
    if not missing:
        return True, "ChecklistComplete", f"all {len(checklist)} items of the production checklist are met"
    listed = "; ".join(f"{i.item}: {i.detail}" for i in missing)
    return False, "ChecklistIncomplete", f"{len(missing)} of {len(checklist)} missing: {listed}"

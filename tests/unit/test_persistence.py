"""What kopf keeps on our objects: the last handled state in memory, progress without a marker."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from tgipool.handlers.persistence import MemoryDiffBaseStorage, UnmarkedProgressStorage, handled_as_is

PREFIX = "tgipool.io"


def body(
    generation: int = 2, observed: int | None = 2, annotations: dict[str, str] | None = None
) -> kopf.Body:
    raw: dict[str, Any] = {
        "apiVersion": "tgipool.io/v1alpha1",
        "kind": "ModelPool",
        "metadata": {"name": "p", "namespace": "ml", "uid": "u-1", "generation": generation},
        "spec": {"replicas": {"min": 1}},
    }
    if annotations:
        raw["metadata"]["annotations"] = annotations
    if observed is not None:
        raw["status"] = {"observedGeneration": observed}
    return kopf.Body(copy.deepcopy(raw))  # type: ignore[arg-type]


def test_after_a_restart_the_status_says_what_was_handled() -> None:
    storage = MemoryDiffBaseStorage(PREFIX)
    # Handled as it is (kopf resumes it): the last handled state is the current one.
    assert storage.fetch(body=body()) == storage.build(body=body())
    # A spec change while the operator was away, or never handled: new to kopf (created).
    assert storage.fetch(body=body(generation=3)) is None
    assert storage.fetch(body=body(observed=None)) is None
    # A handler waiting for a retry (kopf's progress annotation): not handled yet.
    waiting = {f"{PREFIX}/pool_changed": '{"started":"2026-11-30T00:00:00.0","retries":1}'}
    assert storage.fetch(body=body(annotations=waiting)) is None
    assert handled_as_is(body(annotations={f"{PREFIX}/planned-rps": "3"}), f"{PREFIX}/")


def test_the_handled_state_lives_in_memory_not_in_a_patch() -> None:
    storage = MemoryDiffBaseStorage(PREFIX)
    new = body(generation=3)
    patch = kopf.Patch()
    essence = storage.build(body=new)
    storage.store(body=new, patch=patch, essence=essence)
    assert not patch, "no annotation written"
    assert storage.fetch(body=new) == essence and len(storage) == 1
    changed = copy.deepcopy(dict(new))
    changed["spec"] = {"replicas": {"min": 2}}
    assert storage.fetch(body=kopf.Body(changed)) == essence, "the old state: kopf sees the change"  # type: ignore[arg-type]
    storage.forget("u-1")
    assert len(storage) == 0


def test_a_handler_done_at_once_leaves_no_patch() -> None:
    storage = UnmarkedProgressStorage(prefix=PREFIX)
    b, patch = body(), kopf.Patch()
    key = kopf.HandlerId("pool_changed")
    storage.store(key=key, record={"started": "2026-11-30T00:00:00.0", "success": True}, body=b, patch=patch)
    storage.purge(key=key, body=b, patch=patch)
    assert not patch, f"kopf's marker or progress left in the patch: {dict(patch)}"


def test_the_essence_is_kopfs_without_copying_the_status() -> None:
    annotations = {
        f"{PREFIX}/pool_changed": '{"started":"2026-11-30T00:00:00.0","retries":1}',
        "kubectl.kubernetes.io/last-applied-configuration": "{}",
        "team": "search",
    }
    raw = dict(body(annotations=annotations))
    raw["metadata"] = {**raw["metadata"], "labels": {"tier": "hot"}, "resourceVersion": "9"}
    raw["status"] = {"conditions": [{"type": "Ready", "status": "True"}] * 50, "observedGeneration": 2}
    full = kopf.Body(raw)  # type: ignore[arg-type]
    storage = MemoryDiffBaseStorage(PREFIX)
    essence = storage.build(body=full)
    assert essence == kopf.DiffBaseStorage.build(storage, body=full)  # kopf's own, whole body
    kept = {
        "labels": {"tier": "hot"},
        "annotations": {k: v for k, v in annotations.items() if "kubectl" not in k},
    }
    assert essence == {"spec": {"replicas": {"min": 1}}, "metadata": kept}
    raw["spec"]["replicas"]["min"] = 5
    assert essence["spec"] == {"replicas": {"min": 1}}, "a copy, not a view of the body"

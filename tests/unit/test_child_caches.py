"""The child caches: what a kind's tap caches, what it tells, and what it leaves to kopf."""

from __future__ import annotations

from typing import Any

from tgipool.desired import names
from tgipool.handlers.child_caches import ChildCaches, Index, Tap, as_streamed
from tgipool.handlers.indexes import pod_view, snapshot, unpack


def child(name: str, pool: str | None = "p", ns: str = "ml", replicas: int = 1) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": names.MANAGED_BY}
    if pool is not None:
        labels[names.POOL_LABEL] = pool
    return {
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"replicas": replicas},
    }


def event(type_: str | None, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "object": obj}


def make_tap() -> tuple[Tap, list[tuple[str, str, str, str, tuple[str, str]]]]:
    told: list[tuple[str, str, str, str, tuple[str, str]]] = []
    return Tap("Deployment", Index(), as_streamed, lambda *e: told.append(e)), told


def names_of(index: Index, key: tuple[str, str]) -> list[str]:
    return sorted(m["metadata"]["name"] for m in unpack(index.get(key)))


def test_the_first_listing_fills_the_cache_and_tells_nothing() -> None:
    tap, told = make_tap()
    assert tap.take(None, event(None, child("a")))
    assert tap.take(None, event(None, child("b", pool="q")))
    tap.listed(None)
    assert names_of(tap.index, ("ml", "p")) == ["a"] and names_of(tap.index, ("ml", "q")) == ["b"]
    assert told == []  # each pool's first reconcile reads the caches itself


def test_watch_events_update_the_cache_and_tell_the_pool() -> None:
    tap, told = make_tap()
    tap.listed(None)
    assert tap.take(None, event("ADDED", child("a")))
    assert tap.take(None, event("MODIFIED", child("a", replicas=3)))
    assert [m["spec"]["replicas"] for m in unpack(tap.index.get(("ml", "p")))] == [3]
    assert tap.take(None, event("DELETED", child("a", replicas=3)))
    assert tap.index.get(("ml", "p")) is None and ("ml", "p") not in tap.index
    assert told == [
        ("ADDED", "Deployment", "ml", "a", ("ml", "p")),
        ("MODIFIED", "Deployment", "ml", "a", ("ml", "p")),
        ("DELETED", "Deployment", "ml", "a", ("ml", "p")),
    ]


def test_an_object_without_a_pool_label_is_left_to_kopf() -> None:
    tap, told = make_tap()
    tap.listed(None)
    assert not tap.take(None, event("ADDED", child("gw", pool=None)))  # a gateway's child
    assert len(tap.index) == 0 and told == []
    assert tap.take(None, event("ADDED", child("a")))
    # Its pool label removed: it leaves the cache, the pool hears of it, and kopf gets the object.
    assert not tap.take(None, event("MODIFIED", child("a", pool=None)))
    assert len(tap.index) == 0
    assert told[-1] == ("DELETED", "Deployment", "ml", "a", ("ml", "p"))


def test_a_relabelled_object_moves_to_its_new_pool() -> None:
    tap, _ = make_tap()
    tap.listed(None)
    tap.take(None, event("ADDED", child("a")))
    tap.take(None, event("MODIFIED", child("a", pool="q")))
    assert tap.index.get(("ml", "p")) is None and names_of(tap.index, ("ml", "q")) == ["a"]
    assert tap.index.pools("ml") == {"q"}


def test_a_relisting_tells_what_changed_and_what_went_while_disconnected() -> None:
    tap, told = make_tap()
    for name in ("same", "changed", "gone"):
        tap.take("ml", event(None, child(name)))
    tap.take("other", event(None, child("elsewhere", ns="other")))
    tap.listed("ml")
    tap.listed("other")
    assert told == []
    # kopf lists again after a "410 Gone": one object changed, one vanished, one is new.
    tap.take("ml", event(None, child("same")))
    tap.take("ml", event(None, child("changed", replicas=2)))
    tap.take("ml", event(None, child("new")))
    tap.listed("ml")
    assert sorted(told) == [
        ("DELETED", "Deployment", "ml", "gone", ("ml", "p")),
        ("MODIFIED", "Deployment", "ml", "changed", ("ml", "p")),
        ("MODIFIED", "Deployment", "ml", "new", ("ml", "p")),
    ]
    assert names_of(tap.index, ("ml", "p")) == ["changed", "new", "same"]
    assert names_of(tap.index, ("other", "p")) == ["elsewhere"]  # another stream's objects stay


def test_a_failing_callback_does_not_stop_the_stream() -> None:
    def boom(*_: Any) -> None:
        raise RuntimeError("boom")

    tap = Tap("Deployment", Index(), as_streamed, boom)
    tap.listed(None)
    assert tap.take(None, event("ADDED", child("a")))
    assert names_of(tap.index, ("ml", "p")) == ["a"]


def test_the_views_answer_like_kopfs_indexes_for_a_snapshot() -> None:
    caches = ChildCaches()
    taps = caches.taps(lambda *_: None)
    taps[("apps", "deployments")].take(None, event(None, child("p")))
    pod = child("p-0")
    pod["kind"], pod["status"] = "Pod", {"phase": "Running", "podIP": "10.0.0.1", "hostIP": "10.1.0.1"}
    taps[("", "pods")].take(None, event(None, pod))
    views = caches.views()
    views["pool_index"] = {}
    views["gateway_index"] = {}
    snap = snapshot(views, ("ml", "p"))
    assert snap.get("Deployment", "p") == child("p")
    assert snap.pods == [pod_view(pod)] and "hostIP" not in snap.pods[0]["status"]
    assert views["pod_pools"].get("ml") == {"p"} and views["pod_pools"].get("other") is None

"""When the operator writes and when it must not."""

from __future__ import annotations

import copy

from tgipool.api.modelgateway import ModelGatewayStatus
from tgipool.api.modelpool import ModelPoolStatus
from tgipool.handlers.writer import Writer, fresher
from tgipool.k8s.compare import HASH_ANNOTATION, is_subset, needs_apply, stamped
from tgipool.status import status_patch

DESIRED = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "p", "namespace": "ml", "labels": {"a": "1"}},
    "spec": {
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "tgi",
                        "args": ["--x=1"],
                        "resources": {"limits": {"memory": "1Gi", "cpu": "0.5"}},
                    }
                ]
            }
        }
    },
}


def observed_after_apply() -> dict:
    obs = copy.deepcopy(stamped(DESIRED))
    # What the API server adds or normalises.
    obs["metadata"].update(uid="u", resourceVersion="7", generation=1)
    obs["spec"]["replicas"] = 1
    c = obs["spec"]["template"]["spec"]["containers"][0]
    c.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
    c["resources"]["limits"]["cpu"] = "500m"
    obs["status"] = {"readyReplicas": 1}
    return obs


def test_unchanged_child_is_not_applied() -> None:
    assert not needs_apply(DESIRED, observed_after_apply())


def test_missing_child_is_applied() -> None:
    assert needs_apply(DESIRED, None)


def test_hand_edit_is_reverted() -> None:
    obs = observed_after_apply()
    obs["spec"]["template"]["spec"]["containers"][0]["args"] = ["--x=2"]
    assert needs_apply(DESIRED, obs)


def test_dropped_field_is_applied_through_the_hash() -> None:
    obs = observed_after_apply()
    smaller = copy.deepcopy(DESIRED)
    del smaller["metadata"]["labels"]
    assert is_subset(stamped(smaller)["spec"], obs["spec"])
    assert needs_apply(smaller, obs), "the stamped hash differs, so the removal is applied"
    assert (
        stamped(smaller)["metadata"]["annotations"][HASH_ANNOTATION]
        != obs["metadata"]["annotations"][HASH_ANNOTATION]
    )


def test_quantities_compare_by_value() -> None:
    assert is_subset({"cpu": "0.5", "m": "1Gi"}, {"cpu": "500m", "m": "1024Mi"})
    assert not is_subset({"cpu": "1"}, {"cpu": "500m"})
    assert not is_subset({"flag": True}, {"flag": "True"})


def test_status_patch_only_when_changed() -> None:
    old = {"phase": "Ready", "replicas": 2, "conditions": [], "kopf": {"x": 1}}
    assert status_patch(ModelPoolStatus(phase="Ready", replicas=2), old) is None
    assert status_patch(ModelPoolStatus(phase="Degraded", replicas=2), old) == {"phase": "Degraded"}
    assert status_patch(ModelPoolStatus(phase="Invalid"), old) == {"phase": "Invalid", "replicas": None}


def test_status_patch_clears_the_keys_of_its_own_kind() -> None:
    old = {
        "phase": "Ready",
        "conditions": [],
        "pools": [],
        "routedPools": 0,
        "defaultPool": "gone",
        "kopf": {},
    }
    new = ModelGatewayStatus(phase="Ready", routed_pools=0)
    assert status_patch(new, old) == {"defaultPool": None}, "a gateway's keys, not a pool's"


def test_fresher_prefers_the_newer_copy() -> None:
    old = {"metadata": {"resourceVersion": "10"}}
    new = {"metadata": {"resourceVersion": "12"}}
    assert fresher(None, new) is new, "the watch has not delivered our apply yet"
    assert fresher(old, new) is new
    assert fresher(new, old) is new, "a hand edit after our apply wins"
    assert fresher(old, None) is old


def test_writer_keeps_an_answer_only_until_the_watch_catches_up() -> None:
    """The writer's copy of what it wrote is a second copy of the object: kept while the cache is
    older (so nothing is written twice), dropped once the cache holds that version or a newer one."""

    class Kube:
        field_manager = "t"

    writer = Writer(Kube())  # type: ignore[arg-type]  (no call reaches the API here)
    answer = {"kind": "Service", "metadata": {"name": "s", "namespace": "ns", "resourceVersion": "12"}}
    writer.remember(answer)
    stale = {"kind": "Service", "metadata": {"name": "s", "namespace": "ns", "resourceVersion": "10"}}
    assert writer.current("Service", "ns", "s", stale) == answer
    assert writer.current("Service", "ns", "s", None) == answer
    assert writer.known("Service", "ns", "s")
    caught_up = {**answer, "spec": {"x": 1}}
    assert writer.current("Service", "ns", "s", caught_up) is caught_up
    assert not writer.known("Service", "ns", "s"), "the answer is dropped once the watch has it"
    assert writer.current("Service", "ns", "s", stale) is stale

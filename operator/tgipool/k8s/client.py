"""The Kubernetes client made at startup: server-side apply, reads, deletes and status patches.

Uses the `kubernetes` package's ApiClient for config loading (kubeconfig, in-cluster, exec
plugins) and raw REST calls, so the operator needs no discovery round-trips. Calls are blocking;
handlers run them in threads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import kubernetes

from tgipool.api.modelpool import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

# apiVersion, kind -> plural; the closed set of kinds the operator writes.
PLURALS = {
    ("v1", "Service"): "services",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "Pod"): "pods",
    ("apps/v1", "Deployment"): "deployments",
    ("batch/v1", "Job"): "jobs",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    (f"{GROUP}/{VERSION}", "ModelPool"): PLURAL,
    (f"{GROUP}/{VERSION}", "ModelGateway"): "modelgateways",
    ("v1", "Secret"): "secrets",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepools",
    # Read only, by `tgipool doctor`.
    ("v1", "Event"): "events",
    ("v1", "Node"): "nodes",
}


# The cause the API server gives for a create in a namespace being deleted.
NAMESPACE_TERMINATING = "NamespaceTerminating"


class ApplyError(Exception):
    """The API server refused a write; `reason` and `message` are safe to show in status."""

    def __init__(self, kind: str, name: str, status: int, reason: str, message: str) -> None:
        super().__init__(f"{kind}/{name}: {status} {reason}: {message}")
        self.kind, self.name, self.status, self.reason, self.message = kind, name, status, reason, message


def path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    out = f"{prefix}/namespaces/{namespace}/{PLURALS[(api_version, kind)]}"
    return f"{out}/{name}" if name else out


@dataclass
class Kube:
    api: Any  # kubernetes.client.ApiClient
    field_manager: str  # names our writes in managedFields; also the user agent

    @classmethod
    def from_environment(cls, field_manager: str, pool_size: int = 16) -> Kube:
        try:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
        conf = kubernetes.client.Configuration.get_default_copy()
        conf.connection_pool_maxsize = pool_size
        api = kubernetes.client.ApiClient(conf)
        api.user_agent = f"{field_manager}-operator"
        return cls(api=api, field_manager=field_manager)

    def _call(
        self,
        method: str,
        url: str,
        body: Any = None,
        content_type: str | None = None,
        query: list[tuple[str, str]] | None = None,
        target: tuple[str, str] | None = None,
    ) -> Any:
        """One request; a refusal raises ApplyError naming `target` (kind, name), else the URL's tail."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        method, full_url, headers, body, _ = self.api.param_serialize(
            method,
            url,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(method, full_url, header_params=headers, body=body, _request_timeout=60)
        data = resp.read()
        if not 200 <= resp.status < 300:
            reason, message = resp.reason or "", ""
            try:
                payload = json.loads(data or b"")
                reason, message = payload.get("reason", reason), payload.get("message", "")
                causes = (payload.get("details") or {}).get("causes") or []
                if any(c.get("reason") == NAMESPACE_TERMINATING for c in causes):
                    reason = NAMESPACE_TERMINATING  # (a 403 Forbidden, like RBAC's; this one passes)
            except (TypeError, ValueError):
                message = str(data)[:500]
            kind, name = target or tuple(url.rstrip("/").split("/")[-2:])
            raise ApplyError(kind, name, resp.status, reason, message)
        return json.loads(data) if data else None

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        url = path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        query = [("fieldManager", self.field_manager), ("force", "true")]
        result: dict[str, Any] = self._call("PATCH", url, manifest, "application/apply-patch+yaml", query)
        return result

    def scale(self, api_version: str, kind: str, namespace: str, name: str, replicas: int) -> None:
        """Sets replicas through the scale subresource: a plain update, so the operator's apply no
        longer owns the field and the HPA can take it over (0 -> 1 wakes a resting pool)."""
        url = path(api_version, kind, namespace, name) + "/scale"
        body = {"spec": {"replicas": replicas}}
        query = [("fieldManager", self.field_manager)]
        self._call("PATCH", url, body, "application/merge-patch+json", query, target=(kind, f"{name}/scale"))

    def list(
        self, api_version: str, kind: str, selector: str | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Objects of a kind, in one namespace or all (a plain LIST; the operator itself uses watches)."""
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        scope = f"/namespaces/{namespace}" if namespace else ""
        query = [("labelSelector", selector)] if selector else []
        url = f"{prefix}{scope}/{PLURALS[(api_version, kind)]}"
        out: list[dict[str, Any]] = self._call("GET", url, query=query)["items"]
        return out

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", path(api_version, kind, namespace, name))
        return out

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        try:
            self._call(
                "DELETE",
                path(api_version, kind, namespace, name),
                {"propagationPolicy": "Background"},
                "application/json",
            )
        except ApplyError as e:
            if e.status != 404:
                raise

    def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], kind: str = "ModelPool"
    ) -> dict[str, Any]:
        """Merge-patches the status subresource; returns the object as the API server now holds it."""
        url = path(f"{GROUP}/{VERSION}", kind, namespace, name) + "/status"
        out: dict[str, Any] = self._call(
            "PATCH", url, {"status": status}, "application/merge-patch+json", target=(kind, f"{name}/status")
        )
        return out

    def merge_patch(self, url: str, body: dict[str, Any]) -> None:
        """A merge patch of an object outside the kinds above, by its URL (kopf's peering object)."""
        self._call("PATCH", url, body, "application/merge-patch+json")

"""Generates the ModelPool CRD from the pydantic models (`tgipool crds`, `make manifests`).

Pydantic emits JSON Schema 2020-12 with $refs; Kubernetes wants a structural OpenAPI v3 schema:
refs inlined, no `anyOf` for optionals, booleans for exclusive bounds, free-form objects marked
with `x-kubernetes-preserve-unknown-fields`, and `default: {}` on nested objects so that their
own defaults apply when the user leaves the whole object out.
"""

from __future__ import annotations

import copy
from typing import Any

from tgipool.api import rules
from tgipool.api.modelgateway import (
    GATEWAY_KIND,
    GATEWAY_NAME_CEL,
    GATEWAY_PLURAL,
    ModelGatewaySpec,
    ModelGatewayStatus,
)
from tgipool.api.modelpool import GROUP, KIND, PLURAL, VERSION, ModelPoolSpec, ModelPoolStatus

Schema = dict[str, Any]

_DROP = {"title", "additionalProperties", "$defs"}


def _resolve(node: Schema, defs: dict[str, Schema]) -> tuple[Schema, bool]:
    """Flattens an optional (`anyOf [X, null]`) and `$ref`s into one node; children untouched."""
    node = dict(node)
    nullable = False
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {variants}")
        node = {**variants[0], **node}
        nullable = True
        if node.get("default", "") is None:
            node.pop("default")
    while "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        node = {**target, **node}
    return node, nullable


def _structural(raw: Schema, defs: dict[str, Schema]) -> tuple[Schema, bool]:
    node, nullable = _resolve(copy.deepcopy(raw), defs)
    extra = node.get("additionalProperties")
    if extra is True or (node.get("type") == "object" and "properties" not in node and extra is None):
        node["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, dict):
        node["additionalProperties"] = _structural(extra, defs)[0]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            node[plain] = value
            node[bound] = True
    if "items" in node:
        node["items"] = _structural(node["items"], defs)[0]
    if "properties" in node:
        required = set(node.get("required", []))
        props = {}
        for name, sub in node["properties"].items():
            child, child_nullable = _structural(sub, defs)
            is_object = child.get("type") == "object" and "properties" in child
            if is_object and name not in required and not child_nullable:
                child.setdefault("default", {})
            props[name] = child
        node["properties"] = props
    drop = (
        _DROP if not isinstance(node.get("additionalProperties"), dict) else _DROP - {"additionalProperties"}
    )
    return {k: v for k, v in node.items() if k not in drop}, nullable


def openapi_schema(model: type[Any]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))[0]


PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".status.servedName"},
    {"name": "Tier", "type": "string", "jsonPath": ".spec.tier"},
    {"name": "Shards", "type": "integer", "jsonPath": ".spec.engine.numShard"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "P95", "type": "number", "jsonPath": ".status.metrics.p95LatencyMs", "description": "p95 ms"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _crd(
    kind: str,
    plural: str,
    short: str,
    description: str,
    spec_schema: Schema,
    status_schema: Schema,
    root_rules: list[dict[str, Any]],
    subresources: Schema,
    columns: list[Schema],
) -> Schema:
    conditions = status_schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    conditions["items"]["required"] = ["type", "status", "reason"]
    root = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": root_rules,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["tgipool"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def modelpool_crd() -> Schema:
    spec_schema = openapi_schema(ModelPoolSpec)
    spec_schema["description"] = "Desired pool of TGI servers."
    return _crd(
        KIND,
        PLURAL,
        "mp",
        "A pool of HuggingFace Text Generation Inference servers for one model.",
        spec_schema,
        openapi_schema(ModelPoolStatus),
        [rules.NAME_CEL],
        {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas.min",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        PRINTER_COLUMNS,
    )


GATEWAY_COLUMNS: list[Schema] = [
    {"name": "Pools", "type": "integer", "jsonPath": ".status.routedPools"},
    {"name": "Default", "type": "string", "jsonPath": ".status.defaultPool"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def modelgateway_crd() -> Schema:
    spec_schema = openapi_schema(ModelGatewaySpec)
    spec_schema["description"] = "A gateway that routes requests across the selected ModelPools."
    return _crd(
        GATEWAY_KIND,
        GATEWAY_PLURAL,
        "mgw",
        "Routes TGI and OpenAI requests to ModelPools by model, token length, priority and tenant.",
        spec_schema,
        openapi_schema(ModelGatewayStatus),
        [GATEWAY_NAME_CEL],
        {"status": {}},
        GATEWAY_COLUMNS,
    )


def all_crds() -> list[Schema]:
    return [modelpool_crd(), modelgateway_crd()]

"""Objects as the API server or a file gives them -> the typed models, and why they were refused."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tgipool.api.modelgateway import ModelGateway
from tgipool.api.modelpool import ModelPool


def describe_validation_error(err: ValidationError) -> str:
    """One line per problem, each naming the field path the user wrote."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc and not msg.startswith(("spec.", "metadata.")) else msg)
    return "; ".join(parts)


def parse_pool(raw: Mapping[str, Any]) -> ModelPool:
    """A ModelPool from its API object; status and unknown top-level keys are not part of it."""
    return ModelPool.model_validate(
        {
            "apiVersion": raw.get("apiVersion"),
            "kind": raw.get("kind"),
            "metadata": raw["metadata"],
            "spec": raw.get("spec") or {},
        }
    )


def parse_gateway(raw: Mapping[str, Any]) -> ModelGateway:
    return ModelGateway.model_validate({"metadata": raw["metadata"], "spec": raw.get("spec") or {}})

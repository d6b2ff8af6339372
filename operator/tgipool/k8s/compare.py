"""Does a child need a server-side apply? Decides "write nothing when nothing changed".

A child is applied when it is missing, when the hash of the desired manifest stamped on it at the
last apply differs (this catches fields we stopped setting), or when any field we set drifted
(someone edited it). Fields the API server or other controllers add are ignored.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

HASH_ANNOTATION = "tgipool.io/desired-hash"


def _quantity(value: str) -> Decimal | None:
    try:
        q: Decimal = parse_quantity(value)  # type: ignore[no-untyped-call]
    except ValueError:
        return None
    return q


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have:
        return True
    if isinstance(want, bool) or isinstance(have, bool):
        return False
    a, b = str(want), str(have)
    if a == b:
        return True
    # The API server normalises resource quantities ("0.5" comes back as "500m").
    qa, qb = _quantity(a), _quantity(b)
    return qa is not None and qa == qb


def is_subset(want: Any, have: Any) -> bool:
    """True when every field of `want` is present in `have` with an equal value."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and is_subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(is_subset(w, h) for w, h in zip(want, have, strict=True))
        )
    return _same_scalar(want, have)


def desired_hash(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def stamped(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its own hash in an annotation (computed before adding it)."""
    h = desired_hash(manifest)
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**meta.get("annotations", {}), HASH_ANNOTATION: h}
    return {**manifest, "metadata": meta}


def needs_apply(desired: dict[str, Any], observed: dict[str, Any] | None) -> bool:
    if observed is None:
        return True
    want = stamped(desired)
    return not is_subset(want, observed)

"""The caches keep each object packed: the same object back, in less memory than its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tgipool.handlers.indexes import pack, slim, unpack

GOLDEN = Path(__file__).parent / "golden" / "llama3-8b-ru-long.yaml"


def test_packed_objects_come_back_whole_and_take_less_than_their_json() -> None:
    docs = [d for d in yaml.safe_load_all(GOLDEN.read_text()) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    deployment["metadata"]["managedFields"] = [{"manager": "tgipool", "fieldsV1": {"f:spec": {}}}]
    packed = pack(slim(deployment))
    (back,) = unpack([packed])
    assert "managedFields" not in back["metadata"]
    del deployment["metadata"]["managedFields"]
    assert back == deployment
    compact = json.dumps(deployment, separators=(",", ":")).encode()
    assert len(packed.raw) < len(compact) / 2, (len(packed.raw), len(compact))

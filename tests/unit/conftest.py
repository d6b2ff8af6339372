from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


@pytest.fixture
def short_pool() -> dict[str, Any]:
    doc = load_example("llama3-8b-ru-short")
    doc["metadata"].update(namespace="ml", uid="0000-1111", generation=3)
    return copy.deepcopy(doc)

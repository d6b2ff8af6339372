"""`tgipool plan`: table, JSON, --config, and invalid files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tgipool.planner.cli import main

from ..conftest import EXAMPLES, load_example
from .configs import LLAMA_3_8B

SHORT = str(EXAMPLES / "llama3-8b-ru-short.yaml")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_with_rates(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-f", SHORT, "--json", "-P", "10000", "-D", "2500", "--batch", "32")
    assert code == 0
    [row] = json.loads(out)
    assert row["name"] == "llama3-8b-ru-short"
    assert row["kvBytesPerToken"] == 131072
    assert row["weightsBytesPerGpu"] == 16 * 10**9
    assert row["maxConcurrentSequences"] == 113
    assert row["feasible"] is True
    assert isinstance(row["reasons"], list)
    assert row["latencySeconds"] == pytest.approx(26.4192)
    assert row["qps"] == pytest.approx(32 / 26.4192)
    assert row["tokensPerHour"] == 9_000_000
    assert row["costPerMillionTokens"] == pytest.approx(2.49 / 9)


def test_json_without_rates_has_no_performance(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-f", SHORT, "--json")
    [row] = json.loads(out)
    assert code == 0
    assert "latencySeconds" not in row
    # default batch when rates are given: min(113 sequences, 128 maxConcurrentRequests) = 113
    code, out, _ = run(capsys, "-f", SHORT, "--json", "-P", "10000", "-D", "2500")
    assert json.loads(out)[0]["batch"] == 113


def test_table_and_folder(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-f", str(EXAMPLES), "-P", "10000", "-D", "2500")
    assert code == 0
    assert "default/llama3-8b-ru-short: CapacityFeasible=True (Fits)" in out
    assert "KV bytes/token  131,072" in out
    assert "cost/1M tokens  0.2767" in out
    pools = [f for f in EXAMPLES.glob("*.yaml") if "kind: ModelPool" in f.read_text()]
    assert out.count("CapacityFeasible=") == len(pools) == 6


def test_config_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = load_example("llama3-8b-ru-short")
    del doc["spec"]["model"]["architecture"]
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(yaml.safe_dump(doc))
    code, out, _ = run(capsys, "-f", str(pool_file), "--json")
    assert json.loads(out)[0]["status"] == "Unknown"
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(LLAMA_3_8B))
    code, out, _ = run(capsys, "-f", str(pool_file), "--config", str(cfg), "--json")
    row = json.loads(out)[0]
    assert (code, row["status"], row["weightsBytesPerGpu"]) == (0, "True", 16_060_522_496)


def test_refused_pool_and_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc: dict[str, Any] = load_example("llama3-8b-ru-short")
    doc["spec"]["gpu"]["memoryGiB"] = 16
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(yaml.safe_dump(doc))
    code, out, _ = run(capsys, "-f", str(pool_file), "--json")
    row = json.loads(out)[0]
    assert (code, row["feasible"], row["reason"]) == (0, False, "WeightsDoNotFit")
    assert "would fit with numShard 2" in row["reasons"][0]
    code, out, _ = run(capsys, "-f", str(pool_file), "--strict")
    assert code == 1
    assert "CapacityFeasible=False (WeightsDoNotFit)" in out


def test_invalid_pool_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = load_example("llama3-8b-ru-short")
    doc["spec"]["engine"]["numShard"] = 9
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(yaml.safe_dump(doc))
    code, out, err = run(capsys, "-f", str(pool_file))
    assert code == 2
    assert out == ""
    assert "numShard" in err and "llama3-8b-ru-short" in err


def test_bad_config_and_empty_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text("{not json")
    code, _, err = run(capsys, "-f", SHORT, "--config", str(cfg))
    assert code == 2 and "--config" in err
    empty = tmp_path / "empty.yaml"
    empty.write_text("kind: ConfigMap\n")
    code, _, err = run(capsys, "-f", str(empty))
    assert code == 2 and "no ModelPool" in err

"""The sizing simulator runs the emulator's scheduler in virtual time; the split follows its curves."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tgipool.api.parse import parse_pool
from tgipool.sizing import virtual_time
from tgipool.sizing.simulate import PoolLayout, simulate
from tgipool.sizing.split import recommend
from tgipool.sizing.traffic import Traffic

ROOT = Path(__file__).resolve().parents[3]


def _traffic(rate: float, budget: int = 2, short_target: float = 6.0, long_target: float = 30.0) -> Traffic:
    return Traffic.model_validate(
        {
            "ratePerSecond": rate,
            "gpuBudget": budget,
            "classes": [
                {
                    "name": "short",
                    "share": 0.8,
                    "p95Seconds": short_target,
                    "inputTokens": [{"tokens": 256}],
                    "outputTokens": [{"tokens": 64}],
                },
                {
                    "name": "long",
                    "share": 0.2,
                    "p95Seconds": long_target,
                    "inputTokens": [{"tokens": 3072}],
                    "outputTokens": [{"tokens": 128}],
                },
            ],
        }
    )


def test_virtual_time_jumps_to_the_next_timer() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3600)
        await asyncio.gather(asyncio.sleep(5), asyncio.sleep(7))
        return loop.time()

    assert virtual_time.run(main()) == pytest.approx(3607)


def test_virtual_time_refuses_a_deadlock() -> None:
    async def main() -> None:
        await asyncio.Event().wait()

    with pytest.raises(RuntimeError, match="blocked"):
        virtual_time.run(main())


def test_an_unloaded_request_takes_the_emulators_modelled_time() -> None:
    # One replica, rare arrivals: prefill 3072 tokens at 20,000 tok/s (the first token comes with it), then
    # 127 decode steps of 20 ms + 0.1 ms x batch 1.
    t = _traffic(0.05, budget=1).model_copy(
        update={"classes": [_traffic(1).classes[1].model_copy(update={"share": 1.0})]}
    )
    res = simulate(t, [PoolLayout("long", 4096, 4224, 1)], seconds=600, warmup=0)["long"]
    expected = 3072 / 20000 + 127 * 0.0201
    assert res.count >= 10
    assert res.p50 == pytest.approx(expected, rel=1e-6)


def test_more_load_means_a_higher_p95_and_round_robin_is_no_better() -> None:
    layout = [PoolLayout("mixed", 3072, 3200, 2)]
    light = simulate(_traffic(4), layout, seconds=60)
    heavy = simulate(_traffic(30), layout, seconds=60)
    rr = simulate(_traffic(30), layout, seconds=60, round_robin=True)
    for name in ("short", "long"):
        assert heavy[name].p95 > light[name].p95
    assert rr["short"].p95 >= heavy["short"].p95 * 0.95


def test_the_split_gives_replicas_to_the_class_furthest_from_its_target() -> None:
    # The long class's prefill dominates: with a tight long target it gets more of the four replicas.
    rec = recommend(_traffic(30, budget=4, long_target=5.0), seconds=40)
    by = {p.name: p for p in rec.pools}
    assert by["long"].replicas > by["short"].replicas
    assert sum(p.replicas for p in rec.pools) == 4
    assert by["short"].max_input_tokens == 256 and by["short"].max_total_tokens == 320


def test_an_impossible_target_is_reported_infeasible() -> None:
    # 64 tokens at >= 20 ms each cannot finish in 0.5 s, whatever the replicas.
    rec = recommend(_traffic(2, budget=3, short_target=0.5), seconds=30)
    assert not rec.feasible
    assert next(p for p in rec.pools if p.name == "short").ratio > 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "classes": [
                    {
                        "name": "a",
                        "share": 0.5,
                        "p95Seconds": 1,
                        "inputTokens": [{"tokens": 1}],
                        "outputTokens": [{"tokens": 1}],
                    }
                ]
            },
            "add up to 1",
        ),
        ({"gpuBudget": 0}, "gpuBudget"),
    ],
)
def test_bad_traffic_names_the_field(change: dict[str, object], message: str) -> None:
    doc = _traffic(1).model_dump(by_alias=True) | change
    with pytest.raises(ValidationError, match=message):
        Traffic.model_validate(doc)


def test_cli_emits_pools_that_parse_and_a_table(tmp_path: Path) -> None:
    f = tmp_path / "traffic.yaml"
    f.write_text(yaml.safe_dump(_traffic(10, budget=2).model_dump(by_alias=True)))
    cmd = [sys.executable, "-m", "tgipool.cli", "plan", "--traffic", str(f), "--seconds", "20"]
    out = subprocess.run(
        [*cmd, "--emit-pools", "org/model"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    pools = [
        parse_pool(d | {"metadata": d["metadata"] | {"namespace": "default"}})
        for d in yaml.safe_load_all(out.stdout)
    ]
    assert [p.name for p in pools] == ["short", "long"]
    assert pools[1].limits.max_input_tokens == 3072
    assert pools[0].metadata.annotations["tgipool.io/planned-requests-per-second"] == "8"
    table = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "Recommended:" in table and "short" in table

"""Faults the emulator and `tgipool sim` reproduce: OOM at warm-up (the kubelet's crash loop on the pod, TGI's
exit under `tgipool emulate`), a slow model, a pod that never gets ready."""

from __future__ import annotations

import argparse
import asyncio
import copy
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from tgipool.emulator import EmulatorSettings, faults
from tgipool.emulator import cli as emulator_cli
from tgipool.emulator.prober import ReadinessProber
from tgipool.emulator.sim import Sim, settings_for_pod

from .test_sim_readiness import NOW, FakeKube, free_port, pod, stamp


def faulty(fault: str, **kw: Any) -> dict[str, Any]:
    p = pod(**kw)
    p["metadata"]["annotations"][faults.FAULT_ANNOTATION] = fault
    return p


def test_parse_the_knob() -> None:
    assert faults.parse("oom") == faults.Fault("oom")
    assert faults.parse("never-ready") == faults.Fault("never-ready")
    assert faults.parse("slow") == faults.Fault("slow", 10.0)
    assert faults.parse("slow=25") == faults.Fault("slow", 25.0)
    for bad in ("boom", "slow=0.5", "oom=2", ""):
        with pytest.raises(ValueError, match=r"fault|factor"):
            faults.parse(bad)
    assert faults.of_pod(faulty("slow=4")) == faults.Fault("slow", 4.0)
    assert faults.of_pod(faulty("nonsense")) is None and faults.of_pod(pod()) is None


def test_what_the_sim_serves_on_a_faulty_pod() -> None:
    base = EmulatorSettings()
    slow = settings_for_pod(faulty("slow"), base)
    assert slow is not None and slow.max_total_tokens == 1500
    assert (slow.decode_step_ms, slow.decode_step_growth_ms) == (
        base.decode_step_ms * 10,
        base.decode_step_growth_ms * 10,
    )
    assert slow.prefill_tokens_per_second == base.prefill_tokens_per_second / 10
    assert settings_for_pod(faulty("never-ready"), base) is None  # nothing listens: never Ready
    assert settings_for_pod(faulty("oom"), base) is None


def test_crash_schedule_is_the_kubelets_backoff() -> None:
    assert faults.crash_schedule(0) == (0, 0.0, 10.0)
    assert faults.crash_schedule(10) == (1, 10.0, 20.0)
    assert faults.crash_schedule(69) == (2, 30.0, 40.0)
    restarts, _, backoff = faults.crash_schedule(3600)
    assert backoff == 300 and restarts == 15  # 10+20+...+160 = 310 s, then every 300 s


def test_oom_pod_status_as_a_kubelet_writes_it() -> None:
    p = faulty("oom", started=NOW - timedelta(seconds=35))
    patch = faults.crash_patch(p, NOW)
    assert patch is not None and patch["metadata"] == {"resourceVersion": "42"}
    (cs,) = patch["status"]["containerStatuses"]
    assert cs["restartCount"] == 3 and (cs["ready"], cs["started"]) == (False, False)
    assert cs["state"]["waiting"] == {
        "reason": "CrashLoopBackOff",
        "message": "back-off 40s restarting failed container=tgi pod=p-0_ml(uid-1)",
    }
    assert cs["lastState"]["terminated"] == {
        "exitCode": 137,
        "reason": "OOMKilled",
        "startedAt": stamp(NOW - timedelta(seconds=5)),
        "finishedAt": stamp(NOW - timedelta(seconds=5)),
    }
    assert [c["type"] for c in patch["status"]["conditions"]] == ["ContainersReady", "Ready"]
    assert all(c["status"] == "False" for c in patch["status"]["conditions"])
    # Written, it is not written again until the next restart.
    p["status"].update(copy.deepcopy(patch["status"]))
    assert faults.crash_patch(p, NOW + timedelta(seconds=30)) is None
    assert (
        faults.crash_patch(p, NOW + timedelta(seconds=40))["status"]["containerStatuses"][0]["restartCount"]
        == 4
    )  # type: ignore[index]
    assert faults.crashes(p) and not faults.crashes(pod())


def test_sim_crash_loops_oom_pods_and_never_serves_them(monkeypatch: pytest.MonkeyPatch) -> None:
    port, other = free_port(), free_port()
    never = faulty("never-ready", ip="127.0.0.1", port=other)
    never["metadata"].update(name="p-1", uid="uid-2")
    kube = FakeKube([faulty("oom", ip="127.0.0.1", port=port), never])
    patches: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(
        Sim, "_patch_status", lambda self, p, patch: patches.append((p["metadata"]["name"], patch))
    )

    async def go() -> None:
        sim = Sim(kube, EmulatorSettings(), load_bytes_per_second=0)  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as session:
            sim.prober = ReadinessProber(session)
            await sim.sync()
        assert sim.running == {}  # neither pod listens
        # The OOM pod's crash loop, and nothing for the never-ready pod (unready already, its probe fails).
        assert [name for name, _ in patches] == ["p-0"]
        assert (
            patches[0][1]["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"]
            == "OOMKilled"
        )

    asyncio.run(go())


def run_emulate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tgipool")
    emulator_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["emulate", *argv])
    return int(args.func(args))


def test_emulate_oom_exits_like_tgis_warm_up(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_emulate(["--fault", "oom", "--max-batch-prefill-tokens", "8192", "--max-total-tokens", "8192"])
    assert code == 1
    err = capsys.readouterr().err
    assert (
        'Error: Warmup(Generation("Not enough memory to handle 8192 prefill tokens. '
        'You need to decrease `--max-batch-prefill-tokens`"))'
    ) in err


def test_emulate_refuses_an_unknown_fault(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_emulate(["--fault", "boom"])
    assert "--fault" in capsys.readouterr().err

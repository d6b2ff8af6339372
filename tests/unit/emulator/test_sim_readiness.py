"""`tgipool sim` on the simulated cluster: load time from the weights annotation, and the kubelet's part
(readiness probes, the pod status patch)."""

from __future__ import annotations

import argparse
import asyncio
import copy
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tgipool.emulator import EmulatorServer, EmulatorSettings
from tgipool.emulator import sim as sim_module
from tgipool.emulator.prober import ReadinessProber
from tgipool.emulator.readiness import Probe, container_started_at, readiness_probes, status_patch
from tgipool.emulator.sim import Sim, load_left, load_seconds, settings_for_pod

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(
    *,
    ready: bool = False,
    ip: str = "127.1.0.5",
    port: int = 8080,
    weights: str | None = None,
    started: datetime = NOW,
) -> dict[str, Any]:
    """A pool's TGI pod as KWOK's tgipool-pod-running stage leaves it (or, `ready`, as the sim makes it)."""
    cond = "True" if ready else "False"
    return {
        "metadata": {
            "name": "p-0",
            "namespace": "ml",
            "uid": "uid-1",
            "resourceVersion": "42",
            "annotations": {"tgipool.io/weights-bytes": weights} if weights else {},
        },
        "spec": {
            "containers": [
                {
                    "name": "tgi",
                    "args": ["--model-id=org/m", f"--port={port}", "--max-total-tokens=1500"],
                    "ports": [{"name": "http", "containerPort": port}],
                    "readinessProbe": {
                        "httpGet": {"path": "/health", "port": "http"},
                        "timeoutSeconds": 5,
                        "failureThreshold": 3,
                    },
                }
            ]
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "startTime": stamp(started),
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": stamp(started)},
                {"type": "Ready", "status": cond, "lastTransitionTime": stamp(started)},
                {"type": "ContainersReady", "status": cond, "lastTransitionTime": stamp(started)},
            ],
            "containerStatuses": [
                {
                    "name": "tgi",
                    "image": "tgi:3.3.6",
                    "ready": ready,
                    "started": ready,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": stamp(started)}},
                }
            ],
        },
    }


# --- load time -------------------------------------------------------------------------------------
def test_load_time_is_the_weights_over_the_rate() -> None:
    assert load_seconds(pod(weights="16000000000"), 2e9) == 8.0
    assert load_seconds(pod(weights="16000000000"), 4e9) == 4.0
    assert load_seconds(pod(), 2e9) == 0.0  # no annotation: no load delay
    assert load_seconds(pod(weights="lots"), 2e9) == 0.0
    assert load_seconds(pod(weights="16000000000"), 0) == 0.0  # the knob turns loading off
    s = settings_for_pod(pod(weights="16000000000"), EmulatorSettings(), 2e9)
    assert s is not None and (s.hostname, s.port, s.load_seconds, s.max_total_tokens) == (
        "127.1.0.5",
        8080,
        8.0,
        1500,
    )


def test_load_counts_from_the_container_start() -> None:
    """A restarted sim does not load a pod that started long ago again."""
    p = pod(started=NOW - timedelta(seconds=3))
    assert load_left(p, 8.0, NOW) == 5.0
    assert load_left(p, 2.0, NOW) == 0.0
    assert load_left(pod(started=NOW + timedelta(seconds=2)), 8.0, NOW) == 8.0  # clock skew: never longer
    del p["status"]["containerStatuses"], p["status"]["startTime"]
    assert load_left(p, 8.0, NOW) == 8.0
    assert container_started_at(pod(), "tgi") == NOW


def test_sim_cli_knobs() -> None:
    parser = argparse.ArgumentParser(prog="tgipool")
    sim_module.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sim"])
    assert (args.load_bytes_per_second, args.readiness) == (2e9, True)
    args = parser.parse_args(["sim", "--load-bytes-per-second", "5e8", "--no-readiness"])
    assert (args.load_bytes_per_second, args.readiness) == (5e8, False)


# --- the readiness patch (pure) --------------------------------------------------------------------
def test_probe_of_the_tgi_container() -> None:
    assert readiness_probes(pod()) == [
        Probe(container="tgi", url="http://127.1.0.5:8080/health", timeout_seconds=5.0, failure_threshold=3)
    ]
    no_ip = pod()
    del no_ip["status"]["podIP"]
    assert readiness_probes(no_ip) == []


def test_healthy_unready_pod_becomes_ready() -> None:
    patch = status_patch(pod(), {"tgi": True}, "2026-11-29T12:00:09Z")
    assert patch is not None
    assert patch["metadata"] == {"resourceVersion": "42"}
    conds = {c["type"]: c for c in patch["status"]["conditions"]}
    for ctype in ("Ready", "ContainersReady"):
        assert conds[ctype] == {
            "type": ctype,
            "status": "True",
            "lastTransitionTime": "2026-11-29T12:00:09Z",
            "reason": None,  # clears the kubelet's ContainersNotReady
            "message": None,
        }
    (cs,) = patch["status"]["containerStatuses"]
    assert (cs["ready"], cs["started"], cs["image"], cs["state"]) == (
        True,
        True,
        "tgi:3.3.6",
        {"running": {"startedAt": "2026-11-29T12:00:00Z"}},
    )


def test_nothing_to_write_when_the_pod_already_says_so() -> None:
    assert status_patch(pod(ready=True), {"tgi": True}, "x") is None
    assert status_patch(pod(), {"tgi": False}, "x") is None


def test_ready_pod_that_stops_answering_becomes_unready() -> None:
    patch = status_patch(pod(ready=True), {"tgi": False}, "2026-11-29T12:05:00Z")
    assert patch is not None
    conds = {c["type"]: c for c in patch["status"]["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "ContainersNotReady"
    assert conds["Ready"]["message"] == "containers with unready status: [tgi]"
    assert conds["Ready"]["lastTransitionTime"] == "2026-11-29T12:05:00Z"
    (cs,) = patch["status"]["containerStatuses"]
    assert (cs["ready"], cs["started"]) == (False, True)  # started once, started for good


def test_containers_without_a_probe_are_ready_while_running() -> None:
    p = pod()
    p["spec"]["containers"].append({"name": "sidecar"})
    p["status"]["containerStatuses"].append({"name": "sidecar", "ready": False, "state": {"running": {}}})
    patch = status_patch(p, {"tgi": True}, "t")
    assert patch is not None
    assert [cs["ready"] for cs in patch["status"]["containerStatuses"]] == [True, True]
    patch = status_patch(p, {"tgi": False}, "t")
    assert patch is not None
    assert patch["status"]["conditions"][0]["message"] == "containers with unready status: [tgi]"


def test_unchanged_condition_keeps_its_transition_time() -> None:
    p = pod(ready=True)
    p["status"]["containerStatuses"][0]["started"] = False  # only the container status differs
    patch = status_patch(p, {"tgi": True}, "later")
    assert patch is not None
    assert {c["lastTransitionTime"] for c in patch["status"]["conditions"]} == {"2026-11-29T12:00:00Z"}


# --- the prober and the sim, against real emulators on loopback ------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_prober_follows_loading_then_probes_ready_containers_each_period() -> None:
    """Not ready: probed at every sync. Ready: probed every periodSeconds, as a kubelet does, and unready
    after failureThreshold failed probes in a row."""

    async def go() -> list[dict[str, bool]]:
        port = free_port()
        server = EmulatorServer(EmulatorSettings(hostname="127.0.0.1", port=port, load_seconds=0.4))
        await server.start()
        seen = []
        async with aiohttp.ClientSession() as session:
            prober = ReadinessProber(session)
            p = pod(ip="127.0.0.1", port=port)
            p["spec"]["containers"][0]["readinessProbe"]["periodSeconds"] = 1
            seen.append(await prober.verdicts(p))  # loading: 503
            await asyncio.sleep(0.5)
            seen.append(await prober.verdicts(p))  # loaded: one success is enough
            await server.stop()
            for _ in range(2):  # within the period: not probed, so no failure counted
                seen.append(await prober.verdicts(p))
            for _ in range(3):  # refused, a period apart: unready on the third failure in a row
                await asyncio.sleep(1.05)
                seen.append(await prober.verdicts(p))
        return seen

    assert asyncio.run(go()) == [{"tgi": v} for v in (False, True, True, True, True, True, False)]


def test_restarted_prober_starts_from_what_the_pod_says() -> None:
    async def go() -> dict[str, bool]:
        async with aiohttp.ClientSession() as session:
            # Nothing listens there; a Ready pod stays Ready until failureThreshold failures.
            return await ReadinessProber(session).verdicts(pod(ready=True, ip="127.0.0.1", port=free_port()))

    assert asyncio.run(go()) == {"tgi": True}


def test_many_probes_at_once_do_not_time_out_waiting_for_each_other() -> None:
    """300 pods probed in one sync against a health endpoint that answers one request per 10 ms (the sim
    serves every emulator from one loop): each probe's 1 s timeout must count from when it is sent, not
    from a queue of a thousand, or healthy Ready pods are flipped back (the 1,000-pool stall)."""

    async def go() -> list[dict[str, bool]]:
        lock = asyncio.Lock()

        async def health(_: web.Request) -> web.Response:
            async with lock:
                await asyncio.sleep(0.01)
            return web.Response()

        app = web.Application()
        app.router.add_get("/health", health)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        pods = []
        for i in range(300):
            p = pod(ip="127.0.0.1", port=port)
            p["metadata"]["uid"] = f"uid-{i}"
            p["spec"]["containers"][0]["readinessProbe"]["timeoutSeconds"] = 1
            p["spec"]["containers"][0]["readinessProbe"]["failureThreshold"] = 1
            pods.append(p)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
                prober = ReadinessProber(session)
                return list(await asyncio.gather(*(prober.verdicts(p) for p in pods)))
        finally:
            await runner.cleanup()

    verdicts = asyncio.run(go())
    assert verdicts == [{"tgi": True}] * 300, sum(1 for v in verdicts if not v["tgi"])


class FakeKube:
    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.field_manager = "tgipool-sim"

    def list(self, api_version: str, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        assert (api_version, kind) == ("v1", "Pod") and selector == sim_module.POD_SELECTOR
        return copy.deepcopy(self.pods)


def test_sim_serves_a_loading_pod_and_reports_it_ready_when_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    now = datetime.now(UTC)
    # 4 GB at 2 GB/s: 2 s of loading from a start just now (stamped to the second: 1-2 s left).
    kube = FakeKube([pod(ip="127.0.0.1", port=port, weights="4000000000", started=now)])
    patches: list[dict[str, Any]] = []
    monkeypatch.setattr(Sim, "_patch_status", lambda self, p, patch: patches.append(patch))

    async def go() -> None:
        sim = Sim(kube, EmulatorSettings(), load_bytes_per_second=2e9)  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as session:
            sim.prober = ReadinessProber(session)
            try:
                await sim.sync()
                settings, _ = sim.running[f"127.0.0.1:{port}"]
                assert settings.load_seconds == 2.0
                assert patches == []  # loading: still not Ready, nothing to write
                await asyncio.sleep(2.1)
                await sim.sync()
                assert len(patches) == 1
                assert patches[0]["status"]["conditions"][-1] == {
                    "type": "Ready",
                    "status": "True",
                    "lastTransitionTime": patches[0]["status"]["conditions"][-1]["lastTransitionTime"],
                    "reason": None,
                    "message": None,
                }
                kube.pods = []  # the pod goes: its emulator stops
                await sim.sync()
                assert sim.running == {}
            finally:
                for _, server in sim.running.values():
                    await server.stop()

    asyncio.run(go())

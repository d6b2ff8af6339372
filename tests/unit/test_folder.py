"""The folder: one task folds metrics rounds into every pool, and stands still while kopf is paused."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import kopf
import pytest
from kopf._cogs.aiokits.aiotoggles import ToggleSet
from kopf._core.actions import execution as kopf_execution
from kopf._core.engines import daemons as kopf_daemons
from kopf._core.engines import posting as kopf_posting
from kopf._core.reactor import running as kopf_running

from tgipool.handlers import peering
from tgipool.handlers import pool as pool_handlers
from tgipool.handlers.indexes import pack
from tgipool.handlers.live_metrics import LiveMetrics
from tgipool.handlers.writer import normal_event, posting_context
from tgipool.monitoring.readings import Reading

LOG = logging.getLogger("test")
HOT, WARM, GONE = ("ml", "hot"), ("ml", "warm"), ("ml", "gone")
T = TypeVar("T")


def pool_body(key: tuple[str, str], tier: str) -> dict[str, Any]:
    return {"metadata": {"name": key[1], "namespace": key[0]}, "spec": {"tier": tier}}


async def as_a_handler(fn: Callable[[], T], queue: asyncio.Queue[Any] | None = None) -> T:
    """Calls fn as kopf calls a handler: in a task of the object, with kopf's posting variables set."""

    async def handler() -> T:
        kopf_posting.settings_var.set(kopf.OperatorSettings())
        kopf_posting.event_queue_loop_var.set(asyncio.get_running_loop())
        kopf_posting.event_queue_var.set(queue or asyncio.Queue())
        kopf_execution.cause_var.set(cast(Any, "the decoded watch event"))
        return fn()

    return await asyncio.create_task(handler())


class NoDaemons:
    def iter_all_daemon_memories(self) -> Iterable[Any]:
        return ()


def test_kopf_hands_its_pause_toggles_to_our_hook() -> None:
    """kopf's operator start looks the daemon killer up in its module: our hook is what it calls."""
    assert kopf_running.daemons.daemon_killer is peering._watching_daemon_killer


def test_paused_follows_kopfs_toggles() -> None:
    async def main() -> list[bool]:
        toggles = ToggleSet(any)
        peer = await toggles.make_toggle(False, name="a peer of higher priority")
        killer = asyncio.create_task(
            kopf_daemons.daemon_killer(
                settings=kopf.OperatorSettings(), memories=NoDaemons(), operator_paused=toggles
            )
        )
        await asyncio.sleep(0.01)
        seen = [peering.paused()]
        await peer.turn_to(True)
        seen.append(peering.paused())
        await peer.turn_to(False)
        seen.append(peering.paused())
        killer.cancel()
        await asyncio.gather(killer, return_exceptions=True)
        return seen

    assert asyncio.run(main()) == [False, True, False]


def test_the_folder_reconciles_what_changed_and_rests_while_paused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each wake: warm pools are reconciled (their idle time), a hot pool only when its share of the
    round changed; a deleted pool and pools no reconcile has seen yet are left alone; nothing while
    paused."""
    kwargs = {
        "pool_index": {
            HOT: [pack(pool_body(HOT, "hot"))],
            WARM: [pack(pool_body(WARM, "warm"))],
            GONE: [pack({**pool_body(GONE, "warm"), "metadata": {"deletionTimestamp": "now"}})],
            ("ml", "unseen"): [pack(pool_body(("ml", "unseen"), "warm"))],
        }
    }
    live = LiveMetrics(None, 60)
    reconciled: list[tuple[str, str]] = []
    is_paused = False

    async def fake_reconcile(key: Any, load: Any, memo: Any, logger: Any, kwargs: Any) -> None:
        assert load() is not None
        memo.folded[key] = pool_handlers._folded(live.reading, key, {}, None)
        reconciled.append(key)

    monkeypatch.setattr(pool_handlers, "_reconcile", fake_reconcile)
    monkeypatch.setattr(pool_handlers, "TIMER_SECONDS", 0.05)
    monkeypatch.setattr(peering, "paused", lambda: is_paused)
    memo = kopf.Memo(live=live, folded={}, posting=[])

    async def main() -> list[list[tuple[str, str]]]:
        nonlocal is_paused
        await as_a_handler(lambda: pool_handlers._keep_posting(copy.copy(memo)))
        for key in (HOT, WARM, GONE):  # as their first reconciles leave them
            memo.folded[key] = pool_handlers._folded(live.reading, key, {}, None)
        folder = asyncio.create_task(pool_handlers.fold_pools(memo, LOG, kwargs))
        rounds = []
        await asyncio.sleep(0.12)  # two wakes by the timer
        rounds.append(list(reconciled))
        reconciled.clear()
        live.reading = Reading(values={HOT: {"p95LatencyMs": 900.0}}, observed_at="t1")
        live.wake()
        await asyncio.sleep(0.01)
        rounds.append(list(reconciled))
        reconciled.clear()
        is_paused = True
        live.reading = Reading(values={HOT: {"p95LatencyMs": 1900.0}}, observed_at="t2")
        live.wake()
        await asyncio.sleep(0.12)
        rounds.append(list(reconciled))
        folder.cancel()
        await asyncio.gather(folder, return_exceptions=True)
        return rounds

    timer_wakes, new_round, while_paused = asyncio.run(main())
    assert timer_wakes and set(timer_wakes) == {WARM}  # (how many wakes: the machine's timing)
    assert set(new_round) == {HOT, WARM} and new_round.count(HOT) == 1
    assert while_paused == []


def test_folds_post_kopf_events_and_hold_no_handlers_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm pool's return to rest is seen by the folder, which no handler started: its event must
    reach kopf's queue (it did not: the e2e BackToRest event never came), and the fold must not carry
    the cause (the decoded watch event) of the handler whose context it copies."""
    live = LiveMetrics(None, 60)
    seen: list[Any] = []

    async def fake_reconcile(key: Any, load: Any, memo: Any, logger: Any, kwargs: Any) -> None:
        seen.append(kopf_execution.cause_var.get(None))
        normal_event(kopf.Body(cast(Any, load())), reason="BackToRest", message="no demand: back to Standby")

    monkeypatch.setattr(pool_handlers, "_reconcile", fake_reconcile)
    monkeypatch.setattr(pool_handlers, "TIMER_SECONDS", 0.05)
    kwargs = {"pool_index": {WARM: [pack(pool_body(WARM, "warm"))]}}
    memo = kopf.Memo(live=live, folded={}, posting=[])

    async def main() -> list[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        folder = asyncio.create_task(pool_handlers.fold_pools(memo, LOG, kwargs))
        memo.folded[WARM] = pool_handlers._folded(live.reading, WARM, {}, None)
        await asyncio.sleep(0.12)
        assert seen == []  # no handler has run yet: nothing to post with, nothing folded
        with pytest.raises(LookupError):
            posting_context()  # outside a handler
        # kopf hands each object's handlers a shallow copy of the memo
        await as_a_handler(lambda: pool_handlers._keep_posting(copy.copy(memo)), queue)
        await asyncio.sleep(0.08)
        folder.cancel()
        await asyncio.gather(folder, return_exceptions=True)
        return [queue.get_nowait() for _ in range(queue.qsize())]

    posted = asyncio.run(main())
    assert seen and seen[0] is None
    assert posted and {(e.reason, e.ref["name"]) for e in posted} == {("BackToRest", "warm")}

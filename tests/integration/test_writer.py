"""The group-commit writer on both stores: batches, conflicts between processes, refusals."""

from __future__ import annotations

import asyncio
import threading
from datetime import date

from services.goals import application as uc
from services.goals.application import GoalsApplication
from services.goals.domain import KeyResult
from shared.domain import CommandContext, RuleBroken
from shared.store import store_env
from shared.writer import CommandWriter
from tests.support import eventually

CTX = CommandContext(
    actor="alice", correlation_id="c", causation_id="r", roles=frozenset({"admin"})
)


async def setup_key_result(writer: CommandWriter) -> str:
    cycle = await writer.execute(
        lambda uow: uc.schedule_cycle(uow, "Q", date(2027, 1, 1), date(2027, 3, 31)), CTX
    )
    cycle_id = cycle.body["id"]
    from uuid import UUID

    objective = await writer.execute(
        lambda uow: uc.create_objective(
            uow,
            cycle_id=UUID(cycle_id),
            title="Grow",
            description="",
            owner="bob",
            team="sales",
            parent_id=None,
        ),
        CTX,
    )
    kr = await writer.execute(
        lambda uow: uc.define_key_result(
            uow,
            UUID(objective.body["id"]),
            title="Revenue",
            kind="number",
            unit="",
            start=0,
            target=10,
            weight=1,
            owner="bob",
        ),
        CTX,
    )
    return kr.body["id"]


async def test_two_writers_racing_on_one_key_result_lose_nothing(goals_settings):
    """Two processes' writers (each with its own cache) adjust the same key result at once:
    every command lands exactly once, in some order, with no version used twice."""
    from uuid import UUID

    apps = [GoalsApplication(store_env(goals_settings)) for _ in range(2)]
    writers = [CommandWriter(app, "goals", max_batch=16) for app in apps]
    for w in writers:
        w.start()
    try:
        kr_id = UUID(await setup_key_result(writers[0]))
        # Warm the second writer's cache so its view goes stale as the first one writes.
        await writers[1].execute(lambda uow: uow.get(kr_id, KeyResult), CTX)

        async def adjust(w: CommandWriter, target: float):
            return await w.execute(
                lambda uow: uc.adjust_target(uow, kr_id, target, "race", None), CTX
            )

        results = await asyncio.gather(
            *(adjust(writers[i % 2], 100 + i) for i in range(60)), return_exceptions=True
        )
    finally:
        for w in writers:
            w.stop()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    versions = sorted(r.version for r in results)
    assert versions == list(range(2, 62))
    kr = apps[0].repository.get(kr_id)
    assert kr.version == 61
    events = list(apps[0].events.get(kr_id))
    targets = sorted(e.target for e in events[1:])
    assert targets == [100 + i for i in range(60)]
    for app in apps:
        app.close()


async def test_a_refused_command_in_a_batch_leaves_the_others_intact(goals_settings):
    from uuid import UUID

    app = GoalsApplication(store_env(goals_settings))
    writer = CommandWriter(app, "goals", max_batch=64)
    writer.start()
    try:
        kr_id = UUID(await setup_key_result(writer))
        before = app.recorder.max_notification_id()

        def adjust(target, reason):
            return writer.execute(
                lambda uow: uc.adjust_target(uow, kr_id, target, reason, None), CTX
            )

        # 20 valid adjustments, with refusals (same target as the previous one) in between.
        coros = []
        for i in range(20):
            coros.append(adjust(200 + i, "ok"))
            coros.append(adjust(200 + i, "repeat: refused"))
        results = await asyncio.gather(*coros, return_exceptions=True)
    finally:
        writer.stop()
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, RuleBroken)]
    assert len(ok) == 20 and len(refused) == 20
    assert app.recorder.max_notification_id() - before == 20
    assert app.repository.get(kr_id).target == 219
    app.close()


async def test_a_batch_is_answered_with_one_wake_up_of_the_event_loop(goals_settings):
    """The commands the writer saved together are answered together: one call into the event
    loop per batch, not one per command (each would wake the loop, which then waits for the
    GIL the writer holds)."""
    from uuid import UUID

    app = GoalsApplication(store_env(goals_settings))
    writer = CommandWriter(app, "goals", max_batch=64)
    writer.start()
    loop = asyncio.get_running_loop()
    from_writer: list[object] = []
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counted(callback, *args, **kwargs):
        if threading.current_thread().name == "goals-writer":
            from_writer.append(callback)
        return call_soon_threadsafe(callback, *args, **kwargs)

    try:
        kr_id = UUID(await setup_key_result(writer))
        running, gate = threading.Event(), threading.Event()

        def held(uow):
            running.set()
            gate.wait(10)  # holds the writer until the ten commands below are queued
            return uow.get(kr_id, KeyResult)

        first = asyncio.ensure_future(writer.execute(held, CTX))
        await eventually(running.is_set)
        adjustments = [
            asyncio.ensure_future(
                writer.execute(lambda uow, t=t: uc.adjust_target(uow, kr_id, t, "r", None), CTX)
            )
            for t in range(300, 310)
        ]
        await eventually(lambda: writer._queue.qsize() == 10)
        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        gate.set()
        results = await asyncio.gather(first, *adjustments)
    finally:
        vars(loop).pop("call_soon_threadsafe", None)
        writer.stop()
        app.close()
    assert [r.status for r in results] == [200] * 11
    assert [r.version for r in results[1:]] == list(range(2, 12))
    # The held command's batch, then the ten adjustments' batch.
    assert len(from_writer) == 2

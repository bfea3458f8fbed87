"""The check-in service's catalogue, fed by a durable JetStream consumer of the goals events:
each event applied once in effect, whatever NATS redelivers, whenever the consumer stops, in
whatever order the stream holds them; bad messages set aside without blocking the stream.

Real nats-server, real goals service, real stores (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import nats
import orjson
from nats.aio.msg import Msg

from services.checkins.application import CheckinsApplication
from services.checkins.main import CheckinsSettings
from shared.catalogue import Catalogue
from shared.consumer import Consumer, Inbox
from shared.nats import NatsLink
from shared.sql import Database
from shared.store import store_env
from shared.telemetry import (
    CONSUMER_DUPLICATES,
    CONSUMER_REDELIVERED,
    CONSUMER_REJECTED,
    CONSUMER_RESCHEDULED,
)
from tests.http.checkins_helpers import goals_position
from tests.http.helpers import add_key_result, create_cycle, create_objective
from tests.support import RunningService, declare_stream, eventually, read_stream


@dataclass
class Running:
    app: CheckinsApplication
    catalogue: Catalogue
    consumer: Consumer
    link: NatsLink


class CrashesBeforeAck(Consumer):
    """Commits each batch, then dies before acknowledging it: the effect is stored, and
    JetStream still thinks nothing was delivered."""

    async def acknowledge(self, msgs: Sequence[Msg]) -> None:
        return None


@asynccontextmanager
async def catalogue_consumer(
    settings: CheckinsSettings, cls: type[Consumer] = Consumer, name: str = "catalogue"
) -> AsyncIterator[Running]:
    app = CheckinsApplication(store_env(settings))
    link = NatsLink(settings.nats_url, name="test-catalogue")
    catalogue = Catalogue()
    consumer = cls(
        "checkins",
        name,
        link,
        Inbox(Database(app), name, catalogue),
        stream="OKR",
        subjects=["okr.goals.>"],
        ack_wait=settings.consumer_ack_wait_s,
        poll_interval=0.2,
        early_delay=0.2,
    )
    catalogue.is_current = lambda: consumer.current
    await link.start()
    await consumer.start()
    try:
        yield Running(app, catalogue, consumer, link)
    finally:
        await consumer.stop()
        await link.close()
        app.close()


def applied_count(running: Running) -> int:
    with running.consumer.inbox.db.transaction(commit=False) as tx:
        row = tx.execute(
            "SELECT applied FROM {t}inbox_positions WHERE consumer = ? AND source = ?",
            (running.consumer.name, "okr/goals"),
        ).fetchone()
    return 0 if row is None else int(row["applied"])


def counter(metric: Any, name: str = "catalogue") -> float:
    return float(metric.labels("checkins", name)._value.get())


async def plan_in_goals(goals: RunningService) -> dict[str, str]:
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id, team="platform")
    key_result_id = await add_key_result(
        goals.client, objective_id, kind="percent", start=0, target=80
    )
    r = await goals.client.post(
        f"/v1/key-results/{key_result_id}/target", json={"target": 90, "reason": "too easy"}
    )
    assert r.status_code == 200, r.text
    return {"cycle": cycle_id, "objective": objective_id, "key_result": key_result_id}


def assert_catalogue_holds(catalogue: Catalogue, ids: dict[str, str]) -> None:
    kr = catalogue.key_result(uuid.UUID(ids["key_result"]))
    assert kr is not None
    assert (kr.kind, kr.start, kr.target, kr.removed) == ("percent", 0.0, 90.0, False)
    cycle = catalogue.cycle(uuid.UUID(ids["cycle"]))
    assert cycle is not None and cycle.status == "active"
    objective = catalogue.objective(uuid.UUID(ids["objective"]))
    assert objective is not None and objective.team == "platform"


async def consumer_info(url: str, durable: str) -> Any:
    nc = await nats.connect(url)
    try:
        return await nc.jetstream().consumer_info("OKR", durable)
    finally:
        await nc.close()


# --- once in effect -----------------------------------------------------------------------


async def test_a_consumer_that_stops_between_applying_and_acking_applies_nothing_twice(
    goals: RunningService, checkins_settings: CheckinsSettings
) -> None:
    ids = await plan_in_goals(goals)
    total = await goals_position(goals)  # 5 events: scheduled, started, created, defined, adjusted
    async with catalogue_consumer(checkins_settings, CrashesBeforeAck) as first:
        await eventually(lambda: first.consumer.positions.get("okr/goals", 0) >= total)
        assert applied_count(first) == 5
    duplicates_before = counter(CONSUMER_DUPLICATES)
    redelivered_before = counter(CONSUMER_REDELIVERED)

    # A new process on the same store: JetStream redelivers everything that was never acked.
    async with catalogue_consumer(checkins_settings) as second:
        assert_catalogue_holds(second.catalogue, ids)  # loaded from the store at start
        await eventually(lambda: counter(CONSUMER_DUPLICATES) - duplicates_before >= 5)
        assert counter(CONSUMER_REDELIVERED) - redelivered_before >= 5
        await eventually(lambda: second.consumer.caught_up)
        assert applied_count(second) == 5
        assert_catalogue_holds(second.catalogue, ids)
    info = await consumer_info(checkins_settings.nats_url, "checkins-catalogue")
    assert info.num_ack_pending == 0


async def test_events_redelivered_by_nats_change_nothing(
    goals: RunningService, checkins_settings: CheckinsSettings
) -> None:
    ids = await plan_in_goals(goals)
    total = await goals_position(goals)
    async with catalogue_consumer(checkins_settings) as running:
        await eventually(lambda: running.consumer.positions.get("okr/goals", 0) >= total)
        before = counter(CONSUMER_DUPLICATES)

        # A relay that republishes after JetStream's duplicate window has passed: the same
        # events, with the same message ids, land in the stream a second time.
        await declare_stream(checkins_settings.nats_url, stream_duplicate_window_s=0.2)
        await asyncio.sleep(0.3)
        messages = await read_stream(checkins_settings.nats_url, total)
        nc = await nats.connect(checkins_settings.nats_url)
        try:
            js = nc.jetstream()
            for m in messages:
                ack = await js.publish(m.subject, m.data, stream="OKR", headers=m.headers)
                assert not ack.duplicate
        finally:
            await nc.close()

        await eventually(lambda: counter(CONSUMER_DUPLICATES) - before >= total)
        assert applied_count(running) == total
        assert_catalogue_holds(running.catalogue, ids)


# --- order and bad messages ---------------------------------------------------------------


def forged(
    subject: str,
    aggregate_id: uuid.UUID,
    version: int,
    sequence: int,
    data: dict[str, Any],
    **overrides: Any,
) -> tuple[str, bytes, dict[str, str]]:
    service = subject.split(".")[1]
    body = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": f"okr/{service}",
        "type": f"{subject}.v1",
        "subject": str(aggregate_id),
        "time": "2027-01-04T09:00:00+00:00",
        "datacontenttype": "application/json",
        "data": data,
        "sequence": sequence,
        "aggregateversion": version,
        "actor": "mallory",
        "correlationid": "c",
        "causationid": "c",
        **overrides,
    }
    return subject, orjson.dumps(body), {"Nats-Msg-Id": f"okr/{service}:{sequence}"}


async def publish(url: str, *messages: tuple[str, bytes, dict[str, str]]) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for subject, data, headers in messages:
            await js.publish(subject, data, stream="OKR", headers=headers)
    finally:
        await nc.close()


SCHEDULED = {"name": "Q1", "starts_on": "2027-01-01", "ends_on": "2027-03-31"}


async def test_an_event_that_arrives_before_its_predecessor_waits_for_it(
    checkins_settings: CheckinsSettings,
) -> None:
    cycle = uuid.uuid4()
    rescheduled = counter(CONSUMER_RESCHEDULED)
    async with catalogue_consumer(checkins_settings) as running:
        # The stream holds `started` (version 2) before `scheduled` (version 1).
        await publish(
            checkins_settings.nats_url,
            forged("okr.goals.cycle.started", cycle, 2, 11, {}),
        )
        await eventually(lambda: counter(CONSUMER_RESCHEDULED) > rescheduled)
        assert running.catalogue.cycle(cycle) is None
        await publish(
            checkins_settings.nats_url,
            forged("okr.goals.cycle.scheduled", cycle, 1, 10, SCHEDULED),
        )
        await eventually(
            lambda: (c := running.catalogue.cycle(cycle)) is not None and c.status == "active"
        )
        assert applied_count(running) == 2


async def test_bad_messages_are_set_aside_without_blocking_the_stream(
    checkins_settings: CheckinsSettings,
) -> None:
    rejected = counter(CONSUMER_REJECTED)
    good, bad_data, mismatched = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with catalogue_consumer(checkins_settings) as running:
        await publish(
            checkins_settings.nats_url,
            ("okr.goals.cycle.scheduled", b"{not json", {"Nats-Msg-Id": "garbage"}),
            # A checkins event pretending to come from goals.
            forged(
                "okr.goals.cycle.scheduled", mismatched, 1, 20, SCHEDULED, source="okr/checkins"
            ),
            # A valid envelope whose data the catalogue cannot use.
            forged("okr.goals.key_result.defined", bad_data, 1, 21, {"kind": "vibes"}),
            forged("okr.goals.cycle.scheduled", good, 1, 22, SCHEDULED),
        )
        await eventually(lambda: running.catalogue.cycle(good) is not None)
        await eventually(lambda: counter(CONSUMER_REJECTED) - rejected >= 3)
        assert running.catalogue.cycle(mismatched) is None
        assert running.catalogue.key_result(bad_data) is None
        assert applied_count(running) == 1
        await eventually(lambda: running.consumer.caught_up)
    info = await consumer_info(checkins_settings.nats_url, "checkins-catalogue")
    assert info.num_ack_pending == 0  # terminated, not left to redeliver forever

"""What the consumer tests through a real NATS server share: goals events published with their
`Nats-Msg-Id`, and a projections consumer applying them through a projector that records what
it applied and can make the store fail once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import nats

from services.projections.main import ProjectionsApplication, ProjectionsSettings
from shared.consumer import Consumer, Inbox, Received
from shared.contract import PREVIOUS_HEADER
from shared.holes import HOLE_WAIT_S
from shared.nats import NatsLink
from shared.sql import Database, Tx
from shared.store import store_env
from tests.integration.test_contract_consumers import SCHEDULED, envelope
from tests.support import SECRET

SOURCE = "okr/goals"


class FailsOnce:
    """Records what it applies; the first time, the store fails under it."""

    def __init__(self, postgres: bool, fail_from: int = 1) -> None:
        self.postgres = postgres
        self.fail_from = fail_from  # the first event at or past this sequence fails
        self.failed = False
        self.applied: list[str] = []  # the ids of the events committed, in order
        self._staged: list[str] = []

    def tables(self) -> Sequence[str]:
        return ["CREATE TABLE IF NOT EXISTS {t}seen (id TEXT PRIMARY KEY)"]

    def load(self, tx: Tx) -> None:
        pass

    def flush(self, tx: Tx) -> None:
        pass

    def committed(self) -> None:
        self.applied += self._staged
        self._staged = []

    def rolled_back(self) -> None:
        self._staged = []

    def apply(self, tx: Tx, event: Received) -> None:
        if not self.failed and event.sequence >= self.fail_from:
            self.failed = True
            if self.postgres:
                tx.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            else:
                tx.execute("SELECT * FROM {t}no_such_table")
        tx.execute("INSERT INTO {t}seen (id) VALUES (?)", (event.id,))
        self._staged.append(event.id)


async def publish(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    others: int = 0,
    previous: dict[int, int] | None = None,
) -> None:
    """Publish goals events with their `Nats-Msg-Id`s; `others`: how many messages on a subject
    the consumers here do not take go before each; `previous`: the `Okr-Previous-Sequence`
    of each sequence, as a relay names them (`chain`)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for body in bodies:
            for _ in range(others):
                await js.publish("okr.checkins.other.thing", b"{}", stream="OKR")
            headers = {"Nats-Msg-Id": f"{SOURCE}:{body['sequence']}"}
            if previous is not None:
                headers[PREVIOUS_HEADER] = str(previous[body["sequence"]])
            await js.publish(
                "okr.goals.cycle.scheduled",
                json.dumps(body).encode(),
                stream="OKR",
                headers=headers,
            )
    finally:
        await nc.close()


def chain(bodies: Sequence[dict[str, Any]]) -> dict[int, int]:
    """Each body's predecessor in the log, as the relay names it: the sequence before it."""
    sequences = sorted(b["sequence"] for b in bodies)
    return dict(zip(sequences, [0, *sequences[:-1]], strict=True))


def goals_events(count: int) -> list[dict[str, Any]]:
    return [envelope("okr.goals.cycle.scheduled", SCHEDULED, n) for n in range(1, count + 1)]


def early_first() -> list[dict[str, Any]]:
    """Three goals events, the first of which is the second version of an aggregate whose
    first version is the third: it arrives early."""
    aggregate = str(uuid.uuid4())
    second = envelope("okr.goals.cycle.scheduled", SCHEDULED, 1)
    first = envelope("okr.goals.cycle.scheduled", SCHEDULED, 3)
    second.update(subject=aggregate, aggregateversion=2)
    first.update(subject=aggregate)
    return [second, envelope("okr.goals.cycle.scheduled", SCHEDULED, 2), first]


class Running:
    def __init__(self, consumer: Consumer, db: Database, projector: FailsOnce) -> None:
        self.consumer = consumer
        self.db = db
        self.projector = projector

    def seen(self) -> set[str]:
        with self.db.transaction(commit=False) as tx:
            return {r["id"] for r in tx.execute("SELECT id FROM {t}seen").fetchall()}

    async def watch(self, bodies: list[dict[str, Any]], sequence: int, seconds: float) -> bool:
        """Sample until every body is applied: whenever `sequence` counts as reached, every
        event up to it must be in the store. Whether the gap was seen open: the consumer past
        `sequence` while an event up to it was still missing."""
        wanted = [b["id"] for b in bodies if b["sequence"] <= sequence]
        everything = {b["id"] for b in bodies}
        gap_seen = False
        started = time.monotonic()
        while True:
            position = self.consumer.positions.get(SOURCE, 0)
            reached = await self.consumer.wait_for(SOURCE, sequence, 0)
            seen = await asyncio.to_thread(self.seen)
            missing = [i for i in wanted if i not in seen]
            assert not (reached and missing), f"{sequence} counted as reached, {missing} missing"
            gap_seen = gap_seen or (position >= sequence and bool(missing))
            if everything <= seen and reached:
                return gap_seen
            assert time.monotonic() - started < seconds, f"{len(everything - seen)} not applied"
            await asyncio.sleep(0.01)


@asynccontextmanager
async def running(
    store: dict[str, Any],
    url: str,
    *,
    name: str = "gaps",
    fail_from: int = 10**9,
    batch: int = 10,
    ack_wait: float = 2,
    sync_every: float = 0.05,
    poll_interval: float = 0.2,
    on_sync_failed: Callable[[], None] | None = None,
    projector_class: type[FailsOnce] = FailsOnce,
    hole_wait: float = HOLE_WAIT_S,
) -> AsyncIterator[Running]:
    """A projections consumer `projections-<name>` on the goals events, applying through a
    `FailsOnce` (failing from `fail_from` on), started and, on leaving, stopped."""
    settings = ProjectionsSettings(jwt_secret=SECRET, **store)
    app = ProjectionsApplication(env=store_env(settings))
    link = NatsLink(url, name)
    db = Database(app)
    projector = projector_class(db.postgres, fail_from=fail_from)
    consumer = Consumer(
        "projections",
        name,
        link,
        Inbox(db, name, projector, hole_wait=hole_wait),
        stream="OKR",
        subjects=["okr.goals.>"],
        batch_size=batch,
        ack_wait=ack_wait,
        poll_interval=poll_interval,
        early_delay=0.5,
        sync_every=sync_every,
        on_sync_failed=on_sync_failed,
    )
    await link.start()
    await consumer.start()
    try:
        yield Running(consumer, db, projector)
    finally:
        await consumer.stop()
        await link.close()
        app.close()

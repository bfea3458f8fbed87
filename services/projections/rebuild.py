"""Rebuilding the views from the beginning of the stream, while the live ones keep serving.

`python -m services.projections rebuild` (the service may keep running):

1. The next generation of tables is created empty (`Tables(n + 1)`), with a durable consumer of
   its own that starts at the first message of the stream.
2. That consumer applies every event to the new tables, with a progress bar, until it has
   caught up with the stream. Meanwhile the service answers from the live generation.
3. The indexes that only the reads need are built: kept up to date through every insert of
   the rebuild, they cost it about a sixth of its time at a million events on PostgreSQL,
   more than building them at the end; one transaction each, so that a live writer of the
   same SQLite file waits for one at a time. Then the live generation is switched in one
   transaction (`view_generation`). The running service
   notices within a second, answers from the new tables and continues the new generation's
   durable consumer from where the rebuild left it (anything delivered but not acknowledged is
   redelivered and recognised by the inbox).
4. The generation before the previous one is dropped at the next rebuild: the previous one stays
   as it was, a way back (`python -m services.projections switch <n>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TextIO

from nats.js.errors import NotFoundError
from tqdm import tqdm

from services.projections.views import Tables, Views
from shared.consumer import Consumer, Inbox
from shared.contract import SUBSCRIPTIONS
from shared.nats import NatsLink
from shared.settings import ServiceSettings
from shared.sql import Database

# Events applied per transaction while rebuilding. Against 1,000: fewer commits, and each
# key result's progress written once per batch for three times the check-ins (measured
# 15,800-16,400 -> 18,000-18,200 events/s on SQLite, about +9% on PostgreSQL, at 100,000
# events); larger batches gained nothing more.
REBUILD_BATCH = 3000

GENERATION_TABLE = (
    "CREATE TABLE IF NOT EXISTS {t}view_generation (id INTEGER PRIMARY KEY, live INTEGER NOT NULL)"
)


def ensure_generations(db: Database) -> None:
    """The one-row table naming the live generation (1 until the first rebuild)."""
    db.create([GENERATION_TABLE])
    with db.transaction() as tx:
        tx.execute("INSERT INTO {t}view_generation VALUES (1, 1) ON CONFLICT (id) DO NOTHING")


def live_generation(db: Database) -> int:
    """The generation the service answers from."""
    with db.transaction(commit=False) as tx:
        row = tx.execute("SELECT live FROM {t}view_generation WHERE id = 1").fetchone()
    return int(row["live"])


def set_live_generation(db: Database, generation: int) -> None:
    with db.transaction() as tx:
        tx.execute("UPDATE {t}view_generation SET live = ? WHERE id = 1", (generation,))


def forget_generation(db: Database, tables: Tables) -> None:
    """Drop a generation's tables and its inbox records."""
    with db.transaction() as tx:
        for statement in tables.drop():
            tx.execute(statement)
        tx.execute("DELETE FROM {t}inbox_versions WHERE consumer = ?", (tables.consumer,))
        tx.execute("DELETE FROM {t}inbox_positions WHERE consumer = ?", (tables.consumer,))
        tx.execute("DELETE FROM {t}inbox_syncs WHERE consumer = ?", (tables.consumer,))
        tx.execute("DELETE FROM {t}inbox_holes WHERE consumer = ?", (tables.consumer,))


async def rebuild(
    settings: ServiceSettings,
    db: Database,
    *,
    progress: bool = True,
    out: TextIO = sys.stderr,
) -> int:
    """Build the next generation from the whole stream and make it live; returns it."""
    await asyncio.to_thread(ensure_generations, db)
    live = await asyncio.to_thread(live_generation, db)
    new = Tables(live + 1)
    link = NatsLink.for_settings(settings, "okr-projections-rebuild")
    await link.start()
    try:
        js = await asyncio.wait_for(link.wait(), 30)
        # Leftovers: a failed rebuild of the same generation, and the one before the previous.
        stale = [new] + ([Tables(live - 1)] if live > 1 else [])
        for tables in stale:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(
                    settings.stream_name, f"{settings.service}-{tables.consumer}"
                )
            await asyncio.to_thread(forget_generation, db, tables)
        total = (await js.stream_info(settings.stream_name)).state.messages
        consumer = Consumer.for_service(
            # Larger batches than live: fewer commits, and no reader waits for each one.
            settings.model_copy(
                update={"consumer_batch_size": max(settings.consumer_batch_size, REBUILD_BATCH)}
            ),
            new.consumer,
            link,
            # The secondary indexes are built once the tables are filled (step 3).
            Inbox(db, new.consumer, Views(new, indexed=False)),
            SUBSCRIPTIONS["projections"][1],
        )
        await consumer.start()
        bar = tqdm(
            total=total,
            unit="event",
            desc=f"views g{new.generation}",
            disable=not progress,
            file=out,
        )
        try:
            while not (consumer.current and consumer.pending == 0 and consumer.delivered >= total):
                bar.update(consumer.delivered - bar.n)
                await asyncio.sleep(0.2)
            bar.update(consumer.delivered - bar.n)
        finally:
            bar.close()
            await consumer.stop()
        if progress:
            print(f"views g{new.generation}: building the indexes", file=out)
        for index in new.indexes():
            # One transaction each: on SQLite the live service's writer waits for one index
            # (0.7-1.0 s for a million synthetic rows on 2 cores), not for all six.
            await asyncio.to_thread(db.create, [index])
        await asyncio.to_thread(set_live_generation, db, new.generation)
        return new.generation
    finally:
        await link.close()

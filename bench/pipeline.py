"""The in-process benchmarks of the pipeline behind the HTTP routes: the store's save rate, the
relay (store → JetStream) and the projections' rebuild (JetStream → views), each beside a
ceiling measured in the same run on the same machine.

`python -m bench.pipeline` runs the three at a small size on SQLite and prints the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats as nats_py
from eventsourcing.persistence import OperationalError, ProgrammingError
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from psycopg import sql as psycopg_sql

from bench import dataset
from bench.common import Figure, Nats, Store, judge
from services.checkins.application import CheckinsApplication
from services.checkins.domain import KeyResultProgress, KeyResultTerms
from services.goals.application import GoalsApplication
from services.projections.main import ProjectionsApplication
from services.projections.rebuild import REBUILD_BATCH
from services.projections.rebuild import rebuild as rebuild_views
from services.projections.views import Tables
from shared.contract import PREVIOUS_HEADER
from shared.domain import CommandContext, command_context
from shared.envelopes import Envelopes
from shared.nats import NatsLink, ensure_stream, stream_config
from shared.relay import Relay
from shared.settings import ServiceSettings
from shared.sql import Database
from shared.store import (
    RELAY_TRACKING_NAME,
    ServiceApplication,
    SQLiteStoreRecorder,
    store_env,
)

RELAY_TARGET = ">= 0.5"  # of relay / raw publishing
REBUILD_RATE_TARGET = ">= 20000"  # events/s, of the value
REBUILD_RATIO_TARGET = ">= 0.25"  # of rebuild / raw reading
BATCHED_SAVE = 256  # check-ins per save: the writer's default max_batch
RAW_FETCH = 1000  # messages per fetch of the raw reader
READ_BACK_CHUNK = 50_000  # messages the raw publisher holds in memory at once
RELAY_ROUNDS = 3  # of the relay and raw publishing, alternating


def key_results_for(events: int) -> int:
    """Key results for a history of `events`: 500 (fewer for a tiny one), more from 50,000
    events on so that none gets more than about 100 check-ins. A progress keeps every
    check-in in its state, so its snapshots grow with its history: 2,000 check-ins on each of
    500 key results would mean gigabytes of snapshots and a generator busy writing them."""
    return max(1, min(500, events // 4), min(10_000, events // 100))


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


# --- the store ----------------------------------------------------------------------------


class _UnsnapshottedCheckins(CheckinsApplication):
    """The checkins application without snapshots: the raw save path."""

    name = "checkins"  # the library names tables (PostgreSQL) after it, not after the class
    snapshotting_intervals = {}


def _save_rates(store: Store, seconds: float) -> dict[str, dict[str, Any]]:
    """Only `app.save` is timed: the domain calls that make the events are not."""
    context = CommandContext("bench-owner", str(uuid.uuid4()), str(uuid.uuid4()))
    cycle_id, objective_id = uuid.uuid4(), uuid.uuid4()
    terms = [
        KeyResultTerms(uuid.uuid4(), objective_id, cycle_id, "number", 0.0, 100.0)
        for _ in range(BATCHED_SAVE)
    ]
    found: dict[str, dict[str, Any]] = {}
    app = dataset.open_app(store, "checkins", _UnsnapshottedCheckins)
    try:
        with command_context(context):
            progress = [KeyResultProgress.open(t) for t in terms]
            app.save(*progress)

            # One check-in per save, round-robin over the key results as real traffic is.
            saves, spent = 0, 0.0
            while spent < seconds:
                agg = progress[saves % BATCHED_SAVE]
                agg.check_in(terms[saves % BATCHED_SAVE], 50.0, 7, "single", [])
                started = time.perf_counter()
                app.save(agg)
                spent += time.perf_counter() - started
                saves += 1
            found["single"] = {"saves": saves, "seconds": spent}

            # One check-in on each of BATCHED_SAVE key results per save: group commit.
            batches, spent = 0, 0.0
            while spent < seconds:
                for agg, t in zip(progress, terms, strict=True):
                    agg.check_in(t, 60.0, 7, "batched", [])
                started = time.perf_counter()
                app.save(*progress)
                spent += time.perf_counter() - started
                batches += 1
            found["batched"] = {
                "events": batches * BATCHED_SAVE,
                "saves": batches,
                "events_per_save": BATCHED_SAVE,
                "seconds": spent,
            }
    finally:
        app.close()

    # What the service adds to every 50th save of a key result's progress: the library loads
    # it from the store (the previous snapshot and 50 events) and writes its snapshot in a
    # transaction of its own.
    snapshotting = dataset.open_app(store, "checkins", CheckinsApplication)
    # The 50 check-ins between the two snapshots are saved without the service's own
    # snapshots: one of any 50 versions is a multiple of 50, and a snapshot taken there in the
    # background could race the one timed below for the same version.
    plain = dataset.open_app(store, "checkins", _UnsnapshottedCheckins)
    try:
        ids = [agg.id for agg in progress]
        for agg_id in ids:
            snapshotting.take_snapshot(agg_id)
        with command_context(context):
            for _ in range(50):
                for agg, t in zip(progress, terms, strict=True):
                    agg.check_in(t, 70.0, 7, "snapshot", [])
                plain.save(*progress)
        started = time.perf_counter()
        for agg_id in ids:
            snapshotting.take_snapshot(agg_id)
        found["snapshot"] = {
            "snapshots": len(ids),
            "events_replayed_each": 50,
            "seconds": time.perf_counter() - started,
        }
    finally:
        plain.close()
        snapshotting.close()
    return found


async def store_ceiling(store: Store, seconds: float) -> list[Figure]:
    """The raw eventsourcing save rate of the checkins application on `store` (its events,
    no snapshots): one check-in per `app.save(progress)` (saves/s), and 256 check-ins of
    different key results per save (events/s); beside them, what a snapshot costs the
    service (one per 50 check-ins of a key result). Writes into the store's checkins
    events: give it a store of its own."""
    found = await asyncio.to_thread(_save_rates, store, seconds)
    single, batched, snapshot = found["single"], found["batched"], found["snapshot"]
    return [
        Figure(
            "store",
            store.kind,
            "single save: 1 check-in per app.save",
            _rate(single["saves"], single["seconds"]),
            "saves/s",
            detail=single,
        ),
        Figure(
            "store",
            store.kind,
            f"batched save: {BATCHED_SAVE} check-ins per app.save",
            _rate(batched["events"], batched["seconds"]),
            "events/s",
            detail=batched,
        ),
        Figure(
            "store",
            store.kind,
            "snapshot of a progress, 50 events after the previous one",
            1000 * snapshot["seconds"] / snapshot["snapshots"],
            "ms",
            detail=snapshot,
        ),
    ]


# --- NATS helpers -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _nats(base: Path) -> AsyncIterator[tuple[Nats, Client, JetStreamContext]]:
    """A fresh nats-server and a raw client connection to it."""
    server = Nats(base)
    server.start()
    nc: Client | None = None
    try:
        nc = await nats_py.connect(server.url, connect_timeout=5)
        yield server, nc, nc.jetstream(timeout=10)
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        server.stop()


async def _wait(condition: Callable[[], bool], patience: float, what: str) -> None:
    deadline = time.monotonic() + patience
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {patience:.0f} s")
        await asyncio.sleep(0.002)


async def _stream_messages(js: JetStreamContext, settings: ServiceSettings) -> int:
    info = await js.stream_info(settings.stream_name)
    return int(info.state.messages)


async def _relay_all(
    app: ServiceApplication, service: str, settings: ServiceSettings, patience: float
) -> float:
    """Run the service's real relay until everything in its store is on the stream; the time
    from its start to the record of its last acknowledged batch."""
    target = await asyncio.to_thread(app.recorder.max_notification_id) or 0
    link = NatsLink.for_settings(settings, f"bench-relay-{service}")
    await link.start()
    relay = Relay(
        app,
        service,
        link,
        stream=settings.stream_name,
        batch_size=settings.relay_batch_size,
        poll_interval=settings.relay_poll_interval_s,
        publish_timeout=settings.relay_publish_timeout_s,
    )
    try:
        await asyncio.wait_for(link.wait(), 30)  # connecting is setup, not relaying
        started = time.perf_counter()
        await relay.start()
        await _wait(lambda: relay.position >= target, patience, f"the {service} relay is behind")
        seconds = time.perf_counter() - started
        if relay.last_error:
            raise RuntimeError(f"the {service} relay failed: {relay.last_error}")
    finally:
        await relay.stop()
        await link.close()
    return seconds


# --- the relay ----------------------------------------------------------------------------


async def _publish_core(
    nc: Client, chunk: list[tuple[str, bytes, dict[str, str]]], stream: str
) -> float:
    """Publish a chunk fully pipelined the cheapest way nats-py can with JetStream's
    acknowledgements: core publishes, each with a reply subject on one inbox, the answers
    counted by the subscription's callback (no future per message). The seconds until the
    last answer."""
    prefix = nc.new_inbox() + "."
    messages = [
        (f"{stream.lower()}." + subject, data, headers | {"Nats-Expected-Stream": stream})
        for subject, data, headers in chunk
    ]
    left = len(messages)
    answered = asyncio.Event()
    problems: list[bytes] = []

    async def answer(msg: Any) -> None:
        nonlocal left
        if b'"error"' in msg.data or b'"duplicate"' in msg.data or msg.headers:
            problems.append(msg.data)
        left -= 1
        if not left:
            answered.set()

    sub = await nc.subscribe(prefix + "*", cb=answer)
    try:
        started = time.perf_counter()
        for i, (subject, data, headers) in enumerate(messages):
            await nc.publish(subject, data, reply=prefix + str(i), headers=headers)
        await asyncio.wait_for(answered.wait(), 120)
        seconds = time.perf_counter() - started
    finally:
        await sub.unsubscribe()
    if problems:
        raise RuntimeError(f"raw publishing was refused or taken for duplicates: {problems[0]!r}")
    return seconds


async def _publish_async(
    js: JetStreamContext, chunk: list[tuple[str, bytes, dict[str, str]]], stream: str
) -> float:
    """The same chunk through nats-py's `publish_async`, all pipelined: the seconds until the
    last acknowledgement."""
    messages = [(f"{stream.lower()}." + subject, data, dict(h)) for subject, data, h in chunk]
    started = time.perf_counter()
    futures = [
        await js.publish_async(subject, data, stream=stream, headers=headers)
        for subject, data, headers in messages
    ]
    acks = await asyncio.gather(*futures)
    seconds = time.perf_counter() - started
    if any(ack.duplicate for ack in acks):
        raise RuntimeError("publish_async's messages were taken for duplicates")
    return seconds


# The raw publishers' streams, beside the stream the relay filled (streams may not share
# subjects: each prefixes the relay's subjects with its own name, in lower case).
RAW_CORE = "RAWCORE"
RAW_ASYNC = "RAWASYNC"


async def _publish_raw(
    nc: Client, js: JetStreamContext, source: str, settings: ServiceSettings
) -> tuple[float, float]:
    """Publish every message of stream `source` again, as the relay publishes them (the same
    bodies, the expected stream, the same `Nats-Msg-Id` and `Okr-Previous-Sequence`), into
    fresh streams of the same configuration on the same server, two raw ways: core publishes
    with their answers counted on one inbox (`_publish_core`, the ceiling) and nats-py's
    `publish_async`. The seconds each spent publishing until the last acknowledgement. The
    messages are read back a chunk
    at a time (not timed), so memory stays bounded; each pipeline drains once per chunk."""
    for name in (RAW_CORE, RAW_ASYNC):
        await js.add_stream(
            dataclasses.replace(stream_config(settings), name=name, subjects=[f"{name.lower()}.>"])
        )
    sub = await js.pull_subscribe(
        "okr.>",
        durable="bench-readback",
        stream=source,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
    )
    count = (await js.stream_info(source)).state.messages
    core = in_async = 0.0
    done = 0
    try:
        while done < count:
            chunk: list[tuple[str, bytes, dict[str, str]]] = []
            while len(chunk) < min(READ_BACK_CHUNK, count - done):
                for msg in await sub.fetch(RAW_FETCH, timeout=10):
                    headers = msg.headers or {}
                    kept = {h: headers[h] for h in ("Nats-Msg-Id", PREVIOUS_HEADER)}
                    chunk.append((msg.subject, msg.data, kept))
            core += await _publish_core(nc, chunk, RAW_CORE)
            in_async += await _publish_async(js, chunk, RAW_ASYNC)
            done += len(chunk)
    finally:
        await sub.unsubscribe()
        await js.delete_consumer(source, "bench-readback")
    for name in (RAW_CORE, RAW_ASYNC):
        if (await js.stream_info(name)).state.messages != count:
            raise RuntimeError(f"raw publishing did not bring every message to {name}")
    return core, in_async


def _relay_breakdown(app: ServiceApplication, batch_size: int) -> dict[str, float]:
    """What the relay's own work costs without NATS: reading the log in its pages, and
    turning each notification into an envelope (the message body)."""
    recorder: Any = app.recorder
    envelopes = Envelopes(app.mapper, "checkins")
    read = encode = 0.0
    sizes: list[int] = []
    position = 0
    while True:
        started = time.perf_counter()
        page = recorder.read_log(position, batch_size)
        read += time.perf_counter() - started
        if not page:
            break
        started = time.perf_counter()
        for n in page:
            sizes.append(len(envelopes.message(n)[1]))
        encode += time.perf_counter() - started
        position = page[-1].id
    return {
        "read_log_s": read,
        "decode_and_envelope_s": encode,
        "mean_message_bytes": statistics.fmean(sizes) if sizes else 0.0,
    }


def forget_relay_position(app: ServiceApplication) -> None:
    """Delete the relay's record of how far it got, so that it publishes the whole store
    again (into a fresh stream)."""
    recorder: Any = app.recorder
    if isinstance(recorder, SQLiteStoreRecorder):
        with recorder.datastore.transaction(commit=True) as cursor:
            cursor.execute(
                "DELETE FROM tracking WHERE application_name = ?", (RELAY_TRACKING_NAME,)
            )
    else:
        statement = psycopg_sql.SQL("DELETE FROM {}.{} WHERE application_name = %s").format(
            psycopg_sql.Identifier(recorder.datastore.schema),
            psycopg_sql.Identifier(recorder.tracking_table_name),
        )
        with recorder.datastore.transaction(commit=True) as cursor:
            cursor.execute(statement, (RELAY_TRACKING_NAME,))
    if recorder.max_tracking_id(RELAY_TRACKING_NAME):
        raise RuntimeError("the relay's position is still recorded")


async def relay(store: Store, base: Path, events: int) -> list[Figure]:
    """The checkins relay publishing a backlog of `events` events to a fresh stream, against
    raw pipelined publishing of the same messages on the same server: `RELAY_ROUNDS` rounds
    of the two, each on a fresh server, and the round of the median ratio is the figure (a
    round lasts seconds, and the host moves by a tenth within that)."""
    key_results = key_results_for(events)
    check_ins = dataset.check_ins_for_events(key_results, events)
    data = await asyncio.to_thread(
        dataset.generate, store, key_results=key_results, check_ins=check_ins
    )
    total = data.checkins_events
    # (relay, raw core publishing, publish_async): seconds each.
    rounds: list[tuple[float, float, float]] = []
    app = await asyncio.to_thread(dataset.open_app, store, "checkins", CheckinsApplication)
    try:
        for n in range(RELAY_ROUNDS):
            if n:
                await asyncio.to_thread(forget_relay_position, app)
            async with _nats(base) as (server, nc, js):
                settings = store.settings("checkins", server.url)
                await ensure_stream(js, settings)
                seconds = await _relay_all(app, "checkins", settings, patience=3600)
                published = await _stream_messages(js, settings)
                if published != total:
                    raise RuntimeError(f"{published} messages on the stream, {total} stored")
                core, in_async = await _publish_raw(nc, js, settings.stream_name, settings)
                rounds.append((seconds, core, in_async))
        breakdown = await asyncio.to_thread(_relay_breakdown, app, settings.relay_batch_size)
    finally:
        await asyncio.to_thread(app.close)

    by_ratio = sorted(rounds, key=lambda r: r[1] / r[0])
    seconds, ceiling_seconds, async_seconds = by_ratio[len(by_ratio) // 2]
    value, ceiling = _rate(total, seconds), _rate(total, ceiling_seconds)
    return [
        Figure(
            "relay",
            store.kind,
            "relay: checkins store → JetStream",
            value,
            "events/s",
            ceiling=ceiling,
            ceiling_name="raw nats-py publishing, all pipelined, answers counted on one inbox;"
            " same messages and headers",
            target=RELAY_TARGET,
            met=judge(value / ceiling, RELAY_TARGET) if ceiling else None,
            detail={
                "target_applies_to": "ratio",
                "events": total,
                "seconds": seconds,
                "ceiling_seconds": ceiling_seconds,
                # nats-py's publish_async of the same messages (the ceiling until 2026-12-06).
                "publish_async": _rate(total, async_seconds),
                # Every round, in the order run: relay and raw publishing, events/s.
                "rounds": [
                    {
                        "relay": _rate(total, r),
                        "raw": _rate(total, c),
                        "publish_async": _rate(total, a),
                        "ratio": c / r,
                    }
                    for r, c, a in rounds
                ],
                "relay_batches": -(-total // settings.relay_batch_size),
                "relay_batch_size": settings.relay_batch_size,
                "ceiling_chunk": READ_BACK_CHUNK,
                "key_results": key_results,
                # The relay's own work without NATS, measured after the run.
                **breakdown,
            },
        )
    ]


# --- the projections' rebuild -------------------------------------------------------------


async def _raw_read(js: JetStreamContext, stream: str, count: int) -> tuple[float, int]:
    """A durable pull consumer reading the whole stream: fetch in large batches, ack each
    message, `json.loads` each message's data. Seconds taken and fetches made."""
    durable = "bench-raw-reader"
    started = time.perf_counter()
    sub = await js.pull_subscribe(
        "okr.>",
        durable=durable,
        stream=stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=RAW_FETCH * 4,
        ),
    )
    read = fetches = 0
    try:
        while read < count:
            try:
                msgs = await sub.fetch(RAW_FETCH, timeout=5)
            except (NatsTimeoutError, TimeoutError):
                continue
            fetches += 1
            for msg in msgs:
                json.loads(msg.data)
                await msg.ack()
            read += len(msgs)
        seconds = time.perf_counter() - started
    finally:
        await sub.unsubscribe()
        await js.delete_consumer(stream, durable)
    return seconds, fetches


def _applied(db: Database, consumer: str) -> int:
    with db.transaction(commit=False) as tx:
        row = tx.execute(
            "SELECT SUM(applied) AS n FROM {t}inbox_positions WHERE consumer = ?", (consumer,)
        ).fetchone()
    return int(row["n"] or 0)


def _views_bytes(db: Database, generation: int) -> dict[str, int] | None:
    """The bytes each table of a generation of the views takes, with its indexes; None where
    the store cannot tell (an SQLite built without its `dbstat` table)."""
    t = Tables(generation)
    if db.postgres:
        statement = "SELECT pg_total_relation_size(?::regclass) AS n"
    else:
        statement = (
            "SELECT SUM(d.pgsize) AS n FROM dbstat d"
            " JOIN sqlite_schema s ON s.name = d.name WHERE s.tbl_name = ?"
        )
    sizes = {}
    try:
        with db.transaction(commit=False) as tx:
            for name, table in (
                ("entities", t.entities),
                ("history", t.history),
                ("audit", t.audit),
            ):
                row = tx.execute(statement, (db.sql(table),)).fetchone()
                sizes[name] = int(row["n"] or 0)
    except (OperationalError, ProgrammingError):
        return None
    return sizes


async def rebuild(store: Store, base: Path, events: int) -> list[Figure]:
    """The projections rebuilt from a stream of `events` events (a cycle of 500 key results,
    more for large sizes, and its check-ins, published by the real relays), against a raw
    reader of the same stream."""
    key_results = key_results_for(events)
    goals_events = 2 + -(-key_results // 10) + key_results
    check_ins = dataset.check_ins_for_events(key_results, max(0, events - goals_events))
    data = await asyncio.to_thread(
        dataset.generate, store, key_results=key_results, check_ins=check_ins
    )
    async with _nats(base) as (server, _, js):
        goals_settings = store.settings("goals", server.url)
        await ensure_stream(js, goals_settings)
        publish_seconds = 0.0
        for service, cls in (("goals", GoalsApplication), ("checkins", CheckinsApplication)):
            app: ServiceApplication = await asyncio.to_thread(dataset.open_app, store, service, cls)
            try:
                settings = store.settings(service, server.url)
                publish_seconds += await _relay_all(app, service, settings, patience=3600)
            finally:
                await asyncio.to_thread(app.close)
        total = await _stream_messages(js, goals_settings)
        if total != data.events:
            raise RuntimeError(f"{total} messages on the stream, {data.events} stored")

        raw_seconds, fetches = await _raw_read(js, goals_settings.stream_name, total)

        settings = store.settings("projections", server.url)
        views = await asyncio.to_thread(ProjectionsApplication, store_env(settings))
        try:
            db = Database(views)
            started = time.perf_counter()
            generation = await rebuild_views(settings, db, progress=False)
            seconds = time.perf_counter() - started
            applied = await asyncio.to_thread(_applied, db, f"views-g{generation}")
            sizes = await asyncio.to_thread(_views_bytes, db, generation)
        finally:
            await asyncio.to_thread(views.close)
        if applied != total:
            raise RuntimeError(f"the rebuild applied {applied} of {total} events")

    value, ceiling = _rate(total, seconds), _rate(total, raw_seconds)
    detail = {
        "events": total,
        "goals_events": data.goals_events,
        "checkins_events": data.checkins_events,
        "key_results": key_results,
        "seconds": seconds,
        "raw_seconds": raw_seconds,
        "raw_fetches": fetches,
        "raw_fetch_size": RAW_FETCH,
        "consumer_batch_size": max(settings.consumer_batch_size, REBUILD_BATCH),
        # rebuild() looks at its consumer every 0.2 s: up to that much is waiting.
        "poll_resolution_s": 0.2,
        "relays_publish_seconds": publish_seconds,
        "views_bytes": sizes,
    }
    figures = [
        Figure(
            "rebuild",
            store.kind,
            "projections rebuild vs raw reading",
            value,
            "events/s",
            ceiling=ceiling,
            ceiling_name=f"nats-py pull fetch({RAW_FETCH}) + ack + json.loads",
            target=REBUILD_RATIO_TARGET,
            met=judge(value / ceiling, REBUILD_RATIO_TARGET) if ceiling else None,
            detail=detail | {"target_applies_to": "ratio"},
        ),
        Figure(
            "rebuild",
            store.kind,
            "projections rebuild rate",
            value,
            "events/s",
            target=REBUILD_RATE_TARGET,
            met=judge(value, REBUILD_RATE_TARGET),
            detail=detail | {"target_applies_to": "value"},
        ),
    ]
    if sizes:
        # What the views take on disk, per event applied: tables and indexes, once rebuilt.
        figures.append(
            Figure(
                "rebuild",
                store.kind,
                "views on disk per event (tables and indexes)",
                sum(sizes.values()) / total,
                "bytes",
                detail=detail,
            )
        )
    return figures


# --- a small run --------------------------------------------------------------------------


def _show(figure: Figure) -> str:
    ratio = f" ratio {figure.ratio:.2f}" if figure.ratio is not None else ""
    ceiling = f" (ceiling {figure.ceiling:,.0f})" if figure.ceiling else ""
    target = (
        f" target {figure.target}: {'met' if figure.met else 'NOT met'}" if figure.target else ""
    )
    value = f"{figure.value:,.0f} {figure.unit}"
    return f"{figure.bench:8} {figure.store:8} {figure.name}: {value}{ceiling}{ratio}{target}"


async def _main(kind: str, events: int, seconds: float) -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="okr-pipeline-") as tmp:
        base = Path(tmp)
        with Store.create(kind, base) as store:
            figures += await store_ceiling(store, seconds)
        with Store.create(kind, base) as store:
            figures += await relay(store, base, events)
        with Store.create(kind, base) as store:
            figures += await rebuild(store, base, events)
    return figures


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    for figure in asyncio.run(_main(kind, size, 3.0)):
        print(_show(figure))
        print("         ", json.dumps(figure.detail, default=str))

"""The event store of a service: an `eventsourcing` Application on SQLite (embedded default) or
PostgreSQL (when `OKR_DATABASE_URL` is set, one schema per service), never silently in memory.

The recorders are the library's process recorders (events plus tracking rows in one
transaction), extended with two tables of our own, both written in the same transaction as the
events of the command concerned: idempotency keys, so a retried command can never be recorded
twice and its first answer survives a restart; lookups, small indexes from a public id to
the aggregate that holds it (a check-in id to its key result's progress); and documents, the
read side of entities that live inside an aggregate's history but not in its state (a check-in,
with its corrections), so that the aggregate stays small however long its history grows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from typing import Any, NamedTuple
from urllib.parse import unquote, urlparse
from uuid import UUID

import orjson
import psycopg
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    JSONTranscoder,
    Notification,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
    Tracking,
    Transcoding,
)
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresProcessRecorder,
)
from eventsourcing.sqlite import (
    SQLiteAggregateRecorder,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteFactory,
    SQLiteProcessRecorder,
    SQLiteTransaction,
)
from eventsourcing.utils import Environment
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

RELAY_TRACKING_NAME = "relay:nats"

# Inserting events into PostgreSQL when the connection fails: as the library does, up to 10
# attempts, 0.2 s apart.
INSERT_ATTEMPTS = 10
INSERT_RETRY_WAIT_S = 0.2

# SQLite's WAL is copied back into the database by a thread of each store's own, this often;
# a commit does it itself only past this many pages in the WAL (40 MB; SQLite's default is
# 1,000), should that thread fall that far behind.
WAL_CHECKPOINT_EVERY_S = 0.1
WAL_AUTOCHECKPOINT_PAGES = 10_000

# How long a store call waits for a PostgreSQL connection while the server is unreachable.
FAIL_FAST_WAIT_S = 0.1


@dataclass(frozen=True)
class StoredAnswer:
    """The first answer to a command sent with an `Idempotency-Key`."""

    fingerprint: str
    status: int
    body: dict[str, Any]


@dataclass
class IdempotencyRecord:
    """To be written with a command's events: its key, and its answer once positions are known.

    `events` names the command's events (originator id, version); the recorder fills in the
    highest of their notification ids as the answer's `position`, inside the same transaction.
    """

    key: str
    fingerprint: str
    status: int
    body: dict[str, Any]
    events: list[tuple[UUID, int]] = field(default_factory=list)
    position_prefix: str = ""
    created_at: float = field(default_factory=time.time)

    def answer(self, ids_by_event: dict[tuple[UUID, int], int]) -> str:
        body = dict(self.body)
        if self.events:
            position = max(ids_by_event[e] for e in self.events)
            body["position"] = f"{self.position_prefix}{position}"
        return orjson.dumps(body).decode()


@dataclass(frozen=True)
class Lookup:
    """One index entry: `key` of `kind` lives in aggregate `value`. Written with the events."""

    kind: str
    key: str
    value: str


@dataclass(frozen=True)
class Document:
    """The current state of an entity kept beside the events (`body`), written in the same
    transaction as the event that changed it. `owner` is the aggregate whose history holds
    the entity, and `seq` orders an owner's documents (a check-in's number)."""

    kind: str
    key: str
    owner: str
    seq: int
    body: dict[str, Any]

    def row(self) -> tuple[str, str, str, int, str]:
        return (self.kind, self.key, self.owner, self.seq, orjson.dumps(self.body).decode())


@dataclass(frozen=True)
class InboxRecord:
    """That a consumer applied an event: written with whatever the event caused."""

    consumer: str
    source: str
    aggregate_id: str
    version: int
    sequence: int
    # The source's holes once this event is settled, (after, through, opened) each
    # (`shared/holes.py`), when the event changed them; None when it did not.
    holes: tuple[tuple[int, int, float], ...] | None = None


class Logged(NamedTuple):
    """A stored event as the relay reads it from the notification log (`read_log`): what the
    library's `Notification` holds, with the originator's id as the text the store keeps (32
    hex digits on SQLite, the dashed form on PostgreSQL)."""

    id: int
    originator_id: str
    originator_version: int
    topic: str
    state: bytes


# The consumers' inbox (shared/consumer.py): what each consumer applied. In every store, so a
# policy can record it in the same transaction as the events it causes. Statements use `?`
# and `{t}` before table names, made concrete by `dialect()`.
INBOX_TABLES = [
    "CREATE TABLE IF NOT EXISTS {t}inbox_versions (consumer TEXT NOT NULL, source TEXT NOT NULL,"
    " aggregate_id TEXT NOT NULL, version BIGINT NOT NULL,"
    " PRIMARY KEY (consumer, source, aggregate_id))",
    "CREATE TABLE IF NOT EXISTS {t}inbox_positions (consumer TEXT NOT NULL, source TEXT NOT NULL,"
    " position BIGINT NOT NULL, applied BIGINT NOT NULL, PRIMARY KEY (consumer, source))",
    # What a consumer's last sync found applied (PostgreSQL): see `Inbox.sync`.
    "CREATE TABLE IF NOT EXISTS {t}inbox_syncs (consumer TEXT PRIMARY KEY,"
    " applied BIGINT NOT NULL)",
    # Sequences of a source a consumer is past and still lacks (`shared/holes.py`): rows only
    # while the stream holds that source's events out of order, rewritten when they change.
    "CREATE TABLE IF NOT EXISTS {t}inbox_holes (consumer TEXT NOT NULL, source TEXT NOT NULL,"
    " after_seq BIGINT NOT NULL, through_seq BIGINT NOT NULL, opened DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (consumer, source, after_seq))",
]
DELETE_INBOX_HOLES = "DELETE FROM {t}inbox_holes WHERE consumer = ? AND source = ?"
INSERT_INBOX_HOLE = "INSERT INTO {t}inbox_holes VALUES (?, ?, ?, ?, ?)"
UPSERT_INBOX_VERSION = (
    "INSERT INTO {t}inbox_versions VALUES (?, ?, ?, ?) ON CONFLICT "
    "(consumer, source, aggregate_id) DO UPDATE SET version = excluded.version"
)
UPSERT_INBOX_SYNC = (
    "INSERT INTO {t}inbox_syncs VALUES (?, ?) ON CONFLICT (consumer) "
    "DO UPDATE SET applied = excluded.applied"
)
UPSERT_INBOX_POSITION = (
    "INSERT INTO {t}inbox_positions VALUES (?, ?, ?, ?) ON CONFLICT (consumer, source) "
    "DO UPDATE SET position = CASE WHEN excluded.position > {t}inbox_positions.position "
    "THEN excluded.position ELSE {t}inbox_positions.position END, "
    "applied = {t}inbox_positions.applied + excluded.applied"
)


DOCUMENT_TABLES = [
    "CREATE TABLE IF NOT EXISTS {t}documents (kind TEXT NOT NULL, key TEXT NOT NULL,"
    " owner TEXT NOT NULL, seq BIGINT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, key))",
    "CREATE INDEX IF NOT EXISTS documents_by_owner ON {t}documents (kind, owner, seq)",
]
UPSERT_DOCUMENT = (
    "INSERT INTO {t}documents VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET"
    " owner = excluded.owner, seq = excluded.seq, body = excluded.body"
)
INSERT_MISSING_DOCUMENT = (
    "INSERT INTO {t}documents VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, key) DO NOTHING"
)
SELECT_DOCUMENT = "SELECT body FROM {t}documents WHERE kind = ? AND key = ?"
SELECT_DOCUMENTS = (
    "SELECT body FROM {t}documents WHERE kind = ? AND owner = ? AND seq < ?"
    " ORDER BY seq DESC LIMIT ?"
)
COUNT_DOCUMENTS = "SELECT COUNT(*) AS n FROM {t}documents WHERE kind = ?"


def dialect(statement: str, schema: str | None) -> str:
    """A statement for SQLite (schema None) or for PostgreSQL in `schema`."""
    if schema is None:
        return statement.replace("{t}", "")
    return statement.replace("{t}", f'"{schema}".').replace("?", "%s")


def _inbox_rows(
    records: Sequence[InboxRecord],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    versions = [(r.consumer, r.source, r.aggregate_id, r.version) for r in records]
    positions = [(r.consumer, r.source, r.sequence, 1) for r in records]
    return versions, positions


def _hole_rows(
    records: Sequence[InboxRecord],
) -> list[tuple[tuple[str, str], list[tuple[Any, ...]]]]:
    """Per (consumer, source) whose holes a record changed, the rows they are now."""
    return [
        ((r.consumer, r.source), [(r.consumer, r.source, *h) for h in r.holes])
        for r in records
        if r.holes is not None
    ]


class RewindRefused(ValueError):
    """A tracked position may only move back: forward, it would skip what is between."""


@dataclass(frozen=True)
class _TrackingStatements:
    """What recording and rewinding a tracked position say, for one store's tracking table
    (`dialect` makes them concrete)."""

    latest: str
    advance: str
    insert_once: str
    delete_after: str
    # Taken before a rewind reads the position, where the store has table locks.
    lock: str | None

    @classmethod
    def of(cls, table: str, schema: str | None) -> _TrackingStatements:
        def concrete(statement: str) -> str:
            return dialect(statement.replace("{tracking}", f'{{t}}"{table}"'), schema)

        return cls(
            latest=concrete(
                "SELECT MAX(notification_id) AS n FROM {tracking} WHERE application_name = ?"
            ),
            advance=concrete(
                "UPDATE {tracking} SET notification_id = ?"
                " WHERE application_name = ? AND notification_id = ?"
            ),
            insert_once=concrete("INSERT INTO {tracking} VALUES (?, ?) ON CONFLICT DO NOTHING"),
            delete_after=concrete(
                "DELETE FROM {tracking} WHERE application_name = ? AND notification_id > ?"
            ),
            lock=concrete("LOCK TABLE {tracking} IN EXCLUSIVE MODE")
            if schema is not None
            else None,
        )


class _TrackingMoves:
    """Recording a tracked position only over the one recorded before (a compare-and-set),
    and moving it back: the same on both stores, in a write transaction of each
    (`_tracking_transaction`, which yields the driver's own cursor)."""

    datastore: Any
    _tracking: _TrackingStatements

    def _tracking_transaction(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def advance_tracking(self, name: str, was: int, position: int) -> bool:
        """Record `position` for `name` if what is recorded is still `was` (0: nothing):
        false, with nothing written, when it was moved meanwhile (`rewind_tracking`)."""
        if not self.datastore.single_row_tracking:  # the library's rows, one per record
            recorder: Any = self
            recorder.insert_tracking(Tracking(application_name=name, notification_id=position))
            return True
        with self._tracking_transaction() as cursor:
            if was:
                cursor.execute(self._tracking.advance, (position, name, was))
            else:
                cursor.execute(self._tracking.insert_once, (name, position))
            return bool(cursor.rowcount == 1)

    def rewind_tracking(self, name: str, position: int) -> int:
        """Move what `name` tracked back to `position` (0: nothing), in one transaction;
        returns where it was. `RewindRefused` if that would move it forward."""
        with self._tracking_transaction() as cursor:
            if self._tracking.lock:
                # A relay recording its position waits for the rewind, or the rewind for it.
                cursor.execute(self._tracking.lock)
            cursor.execute(self._tracking.latest, (name,))
            row = cursor.fetchone()
            was = int(row["n"] or 0) if row else 0
            if position < 0:
                raise RewindRefused(f"a position is 0 or more, not {position}")
            if position > was:
                raise RewindRefused(
                    f"it is at {was}: moving it forward to {position} would skip the events"
                    " between; it only moves back"
                )
            cursor.execute(self._tracking.delete_after, (name, position))
            if position:
                cursor.execute(self._tracking.insert_once, (name, position))
        return was


def _body(text: str) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(text)
    return body


def _ids_by_event(
    stored_events: Sequence[StoredEvent], ids: Sequence[int] | None
) -> dict[tuple[UUID, int], int]:
    assert ids is not None and len(ids) == len(stored_events)
    return {
        (UUID(str(s.originator_id)), s.originator_version): i
        for s, i in zip(stored_events, ids, strict=True)
    }


class SQLiteStoreRecorder(_TrackingMoves, SQLiteProcessRecorder):
    # The application's snapshot recorder (same file): a save's snapshots go in with its events.
    snapshot_recorder: SQLiteAggregateRecorder | None = None
    _tracking = _TrackingStatements.of("tracking", None)

    @contextmanager
    def _tracking_transaction(self) -> Iterator[sqlite3.Cursor]:
        # BEGIN IMMEDIATE: a writer of the tracking row waits for this one, and it for them.
        with self.datastore.transaction(commit=True) as c:
            yield c.sqlite_cursor

    def construct_create_table_statements(self) -> list[str]:
        statements = super().construct_create_table_statements()
        statements.append(
            "CREATE TABLE IF NOT EXISTS idempotency_keys ("
            "key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status INTEGER NOT NULL, "
            "body TEXT NOT NULL, created_at REAL NOT NULL) WITHOUT ROWID"
        )
        statements.append(
            "CREATE TABLE IF NOT EXISTS lookups (kind TEXT NOT NULL, key TEXT NOT NULL, "
            "value TEXT NOT NULL, PRIMARY KEY (kind, key)) WITHOUT ROWID"
        )
        statements.extend(dialect(t, None) for t in INBOX_TABLES + DOCUMENT_TABLES)
        return statements

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        records: list[IdempotencyRecord] = kwargs.get("idempotency") or []
        if records:
            by_event = _ids_by_event(stored_events, ids)
            # A duplicate key raises IntegrityError and rolls the whole transaction back.
            c.executemany(
                "INSERT INTO idempotency_keys VALUES (?, ?, ?, ?, ?)",
                [
                    (r.key, r.fingerprint, r.status, r.answer(by_event), r.created_at)
                    for r in records
                ],
            )
        lookups: list[Lookup] = kwargs.get("lookups") or []
        if lookups:
            c.executemany(
                "INSERT INTO lookups VALUES (?, ?, ?)", [(x.kind, x.key, x.value) for x in lookups]
            )
        documents: list[Document] = kwargs.get("documents") or []
        if documents:
            c.executemany(dialect(UPSERT_DOCUMENT, None), [d.row() for d in documents])
        snapshots: list[StoredEvent] = kwargs.get("snapshots") or []
        if snapshots and self.snapshot_recorder is not None:
            self.snapshot_recorder._insert_events(c, snapshots)
        self._record_inbox(c, kwargs.get("inbox") or [])
        return ids

    def read_log(self, after: int, limit: int) -> list[Logged]:
        """The stored events after notification id `after`, at most `limit`, in order: what
        `select_notifications` returns, read as plain rows. The library's way builds a
        `sqlite3.Row`, a `UUID` and a frozen dataclass per event: two thirds of its time."""
        with self.datastore.transaction(commit=False) as c:
            cursor = c.sqlite_cursor
            cursor.row_factory = None
            cursor.execute(
                "SELECT rowid, originator_id, originator_version, topic, state"  # noqa: S608
                f" FROM {self.events_table_name} WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (after, limit),
            )
            return list(map(Logged._make, cursor.fetchall()))

    def add_missing_documents(self, documents: Sequence[Document]) -> None:
        """Documents rebuilt from the events; one already there (written since) is kept."""
        with self.datastore.transaction(commit=True) as c:
            c.executemany(dialect(INSERT_MISSING_DOCUMENT, None), [d.row() for d in documents])

    def find_document(self, kind: str, key: str) -> dict[str, Any] | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(dialect(SELECT_DOCUMENT, None), (kind, key))
            row = c.fetchone()
        return None if row is None else _body(row["body"])

    def documents_of(self, kind: str, owner: str, before: int, limit: int) -> list[dict[str, Any]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(dialect(SELECT_DOCUMENTS, None), (kind, owner, before, limit))
            rows = c.fetchall()
        return [_body(row["body"]) for row in rows]

    def count_documents(self, kind: str) -> int:
        with self.datastore.transaction(commit=False) as c:
            c.execute(dialect(COUNT_DOCUMENTS, None), (kind,))
            return int(c.fetchone()["n"])

    def count_lookups(self, kind: str) -> int:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT COUNT(*) AS n FROM lookups WHERE kind = ?", (kind,))
            return int(c.fetchone()["n"])

    def lookup_values(self, kind: str) -> list[str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT DISTINCT value FROM lookups WHERE kind = ?", (kind,))
            return [str(row["value"]) for row in c.fetchall()]

    def _record_inbox(self, c: Any, records: Sequence[InboxRecord]) -> None:
        versions, positions = _inbox_rows(records)
        for row in versions:
            c.execute(dialect(UPSERT_INBOX_VERSION, None), row)
        for row in positions:
            c.execute(dialect(UPSERT_INBOX_POSITION, None), row)
        for key, holes in _hole_rows(records):
            c.execute(dialect(DELETE_INBOX_HOLES, None), key)
            c.executemany(dialect(INSERT_INBOX_HOLE, None), holes)

    def record_inbox(self, records: Sequence[InboxRecord]) -> None:
        """Inbox records of events that caused no event of ours."""
        with self.datastore.transaction(commit=True) as c:
            self._record_inbox(c, records)

    def find_lookup(self, kind: str, key: str) -> str | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT value FROM lookups WHERE kind = ? AND key = ?", (kind, key))
            row = c.fetchone()
        return None if row is None else str(row["value"])

    def insert_answers(self, records: list[IdempotencyRecord]) -> None:
        """Answers of commands that recorded no event (so no position)."""
        with self.datastore.transaction(commit=True) as c:
            c.executemany(
                "INSERT INTO idempotency_keys VALUES (?, ?, ?, ?, ?)",
                [(r.key, r.fingerprint, r.status, r.answer({}), r.created_at) for r in records],
            )

    def find_answer(self, key: str) -> StoredAnswer | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT fingerprint, status, body FROM idempotency_keys WHERE key = ?", (key,)
            )
            row = c.fetchone()
        if row is None:
            return None
        return StoredAnswer(row["fingerprint"], row["status"], orjson.loads(row["body"]))

    def ping(self) -> None:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT 1")


def roll_back_if_open(conn: psycopg.Connection[Any]) -> None:
    """After a failure in a transaction begun by hand (a script, a pipeline): roll it back, so
    the connection goes back to the pool idle. A broken connection is dropped by the pool."""
    if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        with contextlib.suppress(psycopg.Error):
            conn.rollback()


class PostgresStoreRecorder(_TrackingMoves, PostgresProcessRecorder):
    # The application's snapshot recorder (same schema): a save's snapshots go in with its
    # events, in the same pipeline.
    snapshot_recorder: PostgresAggregateRecorder | None = None

    def _notify_channel(self, curs: Any) -> None:
        """No NOTIFY with each insert of events: it is for the library's LISTEN-based
        subscriptions, and nothing here listens (each service's relay is woken by its writer,
        and other services learn of events from NATS). A NOTIFY costs a statement in every
        write and, at commit, a lock shared by the whole PostgreSQL cluster."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """The library's insert, retried as the library retries it when the connection
        fails, but never applied twice. A connection lost during COMMIT leaves its outcome
        unknown: the server may have committed. Then the retry meets its own events under the
        unique key, and an `IntegrityError` there would make the writer run its commands again
        from a fresh load, recording each a second time. So after such a failure an
        `IntegrityError` is first checked against the store: when the events there are these
        very events (same ids, versions and state), the first attempt committed and its
        notification ids are the answer."""
        uncertain = False
        for attempt in range(1, INSERT_ATTEMPTS + 1):
            try:
                if kwargs.get("tracking") is not None:  # not used here; the library's way
                    insert = PostgresApplicationRecorder.insert_events.__wrapped__
                    ids: Sequence[int] | None = insert(self, stored_events, **kwargs)
                    return ids
                return self._insert_pipelined(stored_events, **kwargs)
            except (InterfaceError, OperationalError):
                if attempt == INSERT_ATTEMPTS:
                    raise
                uncertain = True
            except IntegrityError:
                if not (uncertain and stored_events):
                    raise
                try:
                    committed = self._ids_if_committed(stored_events)
                except (InterfaceError, OperationalError):
                    if attempt == INSERT_ATTEMPTS:
                        raise
                    # The store is away again: insert once more, and look again after that.
                else:
                    if committed is None:
                        raise  # another writer's events: a true conflict
                    log.warning(
                        "a commit whose answer was lost had succeeded: %d events kept once",
                        len(stored_events),
                    )
                    return committed
            time.sleep(INSERT_RETRY_WAIT_S * random.uniform(0.95, 1.05))
        raise AssertionError("unreachable")  # pragma: no cover

    def _insert_pipelined(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        """One transaction in one round trip to the server (two when a command's answer is
        stored, since it holds the events' notification ids): BEGIN, the table lock and the
        events, then the answers, lookups, documents and inbox rows, and COMMIT, all sent in
        one pipeline. The library's way (a pipeline around psycopg's `transaction()`, which
        syncs as it is entered and left) makes five round trips, each a wait for the server and
        then for the GIL on a busy process. Any error (a duplicate key among them) aborts the
        transaction on the server: nothing is kept, and the error is raised here."""
        records: list[IdempotencyRecord] = kwargs.get("idempotency") or []
        with self.datastore.get_connection() as conn:
            try:
                with conn.pipeline() as pipeline:
                    curs = conn.cursor()
                    curs.execute("BEGIN")
                    inserted = conn.cursor()
                    if stored_events:
                        self._insert_stored_events(inserted, stored_events, **kwargs)
                    ids: list[int] | None = None
                    if records:
                        pipeline.sync()  # the notification ids, for the answers
                        ids = self._returned_ids(inserted, stored_events)
                        by_event = _ids_by_event(stored_events, ids)
                        curs.executemany(
                            self._insert_answer_strictly,
                            [
                                (r.key, r.fingerprint, r.status, r.answer(by_event), r.created_at)
                                for r in records
                            ],
                        )
                    self._write_beside_events(curs, **kwargs)
                    curs.execute("COMMIT")
            except BaseException:
                roll_back_if_open(conn)
                raise
            return ids if ids is not None else self._returned_ids(inserted, stored_events)

    @staticmethod
    def _returned_ids(curs: Any, stored_events: Sequence[StoredEvent]) -> list[int]:
        if not stored_events:
            return []
        ids = [int(row["notification_id"]) for row in curs.fetchall()]
        if len(ids) != len(stored_events):
            raise ProgrammingError(
                f"Couldn't get all notification IDs (got {len(ids)}, expected {len(stored_events)})"
            )
        return ids

    def _write_beside_events(self, curs: Any, **kwargs: Any) -> None:
        """The lookups, documents and inbox rows saved with the events."""
        lookups: list[Lookup] = kwargs.get("lookups") or []
        if lookups:
            curs.executemany(self._insert_lookup, [(x.kind, x.key, x.value) for x in lookups])
        documents: list[Document] = kwargs.get("documents") or []
        if documents:
            curs.executemany(self._upsert_document, [d.row() for d in documents])
        snapshots: list[StoredEvent] = kwargs.get("snapshots") or []
        if snapshots and self.snapshot_recorder is not None:
            self.snapshot_recorder._insert_stored_events(curs, snapshots)
        self._record_inbox(curs, kwargs.get("inbox") or [])

    def _ids_if_committed(self, stored_events: Sequence[StoredEvent]) -> list[int] | None:
        """The notification ids of `stored_events` if exactly these events are stored (all of
        them, with the same topic and state), else None."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                self._select_own_events,
                (
                    [e.originator_id for e in stored_events],
                    [e.originator_version for e in stored_events],
                ),
            )
            rows = {(str(r["originator_id"]), r["originator_version"]): r for r in curs.fetchall()}
        ids: list[int] = []
        for e in stored_events:
            row = rows.get((str(e.originator_id), e.originator_version))
            if row is None or row["topic"] != e.topic or bytes(row["state"]) != e.state:
                return None
            ids.append(int(row["notification_id"]))
        return ids

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        schema = Identifier(self.datastore.schema)
        self._select_own_events = SQL(
            "SELECT t.originator_id, t.originator_version, t.topic, t.state, t.notification_id "
            "FROM {schema}.{table} AS t "
            "JOIN unnest(%s::{id_type}[], %s::bigint[]) AS k(id, version) "
            "ON t.originator_id = k.id AND t.originator_version = k.version"
        ).format(
            schema=schema,
            table=Identifier(self.events_table_name),
            id_type=SQL(self.datastore.originator_id_type),
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.idempotency_keys ("
                "key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status INTEGER NOT NULL, "
                "body TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)"
            ).format(schema=schema)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.lookups (kind TEXT NOT NULL, "
                "key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, key))"
            ).format(schema=schema)
        )
        for table in INBOX_TABLES + DOCUMENT_TABLES:
            self.sql_create_statements.append(SQL(dialect(table, self.datastore.schema)))  # type: ignore[arg-type]
        self._upsert_document = dialect(UPSERT_DOCUMENT, self.datastore.schema)
        self._upsert_version = dialect(UPSERT_INBOX_VERSION, self.datastore.schema)
        self._upsert_position = dialect(UPSERT_INBOX_POSITION, self.datastore.schema)
        self._delete_holes = dialect(DELETE_INBOX_HOLES, self.datastore.schema)
        self._insert_hole = dialect(INSERT_INBOX_HOLE, self.datastore.schema)
        self._tracking = _TrackingStatements.of(self.tracking_table_name, self.datastore.schema)
        self._read_log = SQL(
            "SELECT notification_id, originator_id::text, originator_version, topic, state"
            " FROM {schema}.{table} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        ).format(schema=schema, table=Identifier(self.events_table_name))
        self._insert_lookup = SQL("INSERT INTO {schema}.lookups VALUES (%s, %s, %s)").format(
            schema=schema
        )
        self._select_lookup = SQL(
            "SELECT value FROM {schema}.lookups WHERE kind = %s AND key = %s"
        ).format(schema=schema)
        self._insert_answer = SQL(
            "INSERT INTO {schema}.idempotency_keys VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (key) DO NOTHING RETURNING key"
        ).format(schema=schema)
        # Inside a pipelined transaction: a key already recorded is an error that aborts it.
        self._insert_answer_strictly = SQL(
            "INSERT INTO {schema}.idempotency_keys VALUES (%s, %s, %s, %s, %s)"
        ).format(schema=schema)
        self._select_answer = SQL(
            "SELECT fingerprint, status, body FROM {schema}.idempotency_keys WHERE key = %s"
        ).format(schema=schema)

    def _fetch_ids_after_insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        records: list[IdempotencyRecord] = kwargs.get("idempotency") or []
        if records:
            by_event = _ids_by_event(stored_events, ids)
            for r in records:
                curs.execute(
                    self._insert_answer,
                    (r.key, r.fingerprint, r.status, r.answer(by_event), r.created_at),
                )
                if curs.fetchone() is None:
                    # Raised inside the library's transaction: everything rolls back.
                    raise IntegrityError(f"Idempotency key already recorded: {r.key}")
        self._write_beside_events(curs, **kwargs)
        return ids

    @contextmanager
    def _tracking_transaction(self) -> Iterator[Any]:
        with self.datastore.transaction(commit=True) as curs:
            yield curs

    def read_log(self, after: int, limit: int) -> list[Logged]:
        """The stored events after notification id `after`, at most `limit`, in order: what
        `select_notifications` returns, read as plain rows (no dict and no dataclass per
        event), in the binary format: the states as they are stored rather than as hex text to
        decode, which took a third off the read's time."""
        with (
            self.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row, binary=True) as curs,
        ):
            curs.execute(self._read_log, (after, limit), prepare=True)
            return [Logged(i, o, v, t, bytes(s)) for i, o, v, t, s in curs.fetchall()]

    def add_missing_documents(self, documents: Sequence[Document]) -> None:
        """Documents rebuilt from the events; one already there (written since) is kept."""
        statement = dialect(INSERT_MISSING_DOCUMENT, self.datastore.schema)
        with self.datastore.transaction(commit=True) as curs:
            curs.executemany(statement, [d.row() for d in documents])

    def _read(self, statement: str, params: tuple[Any, ...]) -> list[Any]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(dialect(statement, self.datastore.schema), params)
            return list(curs.fetchall())

    def find_document(self, kind: str, key: str) -> dict[str, Any] | None:
        rows = self._read(SELECT_DOCUMENT, (kind, key))
        return _body(rows[0]["body"]) if rows else None

    def documents_of(self, kind: str, owner: str, before: int, limit: int) -> list[dict[str, Any]]:
        rows = self._read(SELECT_DOCUMENTS, (kind, owner, before, limit))
        return [_body(row["body"]) for row in rows]

    def count_documents(self, kind: str) -> int:
        return int(self._read(COUNT_DOCUMENTS, (kind,))[0]["n"])

    def count_lookups(self, kind: str) -> int:
        rows = self._read("SELECT COUNT(*) AS n FROM {t}lookups WHERE kind = ?", (kind,))
        return int(rows[0]["n"])

    def lookup_values(self, kind: str) -> list[str]:
        rows = self._read("SELECT DISTINCT value FROM {t}lookups WHERE kind = ?", (kind,))
        return [str(row["value"]) for row in rows]

    def _record_inbox(self, curs: Any, records: Sequence[InboxRecord]) -> None:
        versions, positions = _inbox_rows(records)
        for row in versions:
            curs.execute(self._upsert_version, row)
        for row in positions:
            curs.execute(self._upsert_position, row)
        for key, holes in _hole_rows(records):
            curs.execute(self._delete_holes, key)
            for hole in holes:
                curs.execute(self._insert_hole, hole)

    def record_inbox(self, records: Sequence[InboxRecord]) -> None:
        """Inbox records of events that caused no event of ours."""
        with self.datastore.transaction(commit=True) as curs:
            self._record_inbox(curs, records)

    def find_lookup(self, kind: str, key: str) -> str | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._select_lookup, (kind, key))
            row = curs.fetchone()
        return None if row is None else str(row["value"])

    def insert_answers(self, records: list[IdempotencyRecord]) -> None:
        """Answers of commands that recorded no event (so no position)."""
        with self.datastore.transaction(commit=True) as curs:
            for r in records:
                curs.execute(
                    self._insert_answer,
                    (r.key, r.fingerprint, r.status, r.answer({}), r.created_at),
                )
                if curs.fetchone() is None:
                    raise IntegrityError(f"Idempotency key already recorded: {r.key}")

    def find_answer(self, key: str) -> StoredAnswer | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._select_answer, (key,))
            row = curs.fetchone()
        if row is None:
            return None
        return StoredAnswer(row["fingerprint"], row["status"], orjson.loads(row["body"]))

    def ping(self) -> None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute("SELECT 1")


class DateAsISO(Transcoding):
    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


def collect(aggregates: Sequence[Aggregate], **kwargs: Any) -> ProcessingEvent[Any]:
    """The pending events of `aggregates`, as `ProcessingEvent.collect_events` gathers them."""
    processing: ProcessingEvent[Any] = ProcessingEvent()
    for aggregate in aggregates:
        processing.events.extend(aggregate.collect_events())
        processing.aggregates[aggregate.id] = aggregate
    processing.saved_kwargs.update(kwargs)
    return processing


class WalCheckpointer:
    """Checkpoints an SQLite store's write-ahead log from a thread of its own.

    By default SQLite copies the WAL back into the database inside the COMMIT that takes the
    WAL past 1,000 pages, so that one commit (a command's, or a consumer's batch) also waits
    for the copy and its fsync: the slowest commits under load, and the tail of the command
    and command -> projection latencies. Here the store's connections checkpoint only as a
    fallback, far later, and this thread runs a PASSIVE checkpoint every
    `WAL_CHECKPOINT_EVERY_S`: it copies what no reader still needs, never blocks a writer or
    a reader, and releases the GIL while it works. Durability is unchanged: a commit is in the
    fsynced WAL either way."""

    def __init__(self, datastore: SQLiteDatastore, name: str) -> None:
        pool = datastore.pool
        create = pool._create_connection

        def create_connection() -> Any:
            conn = create()
            _fallback_checkpoints(conn._sqlite_conn)
            return conn

        pool._create_connection = create_connection  # type: ignore[method-assign]
        for conn in [*pool._pool, *pool._in_use.values()]:  # made while the tables were
            _fallback_checkpoints(conn._sqlite_conn)
        self._conn = sqlite3.connect(
            pool.db_name, uri=True, check_same_thread=False, isolation_level=None
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"{name}-wal-checkpoints", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(WAL_CHECKPOINT_EVERY_S):
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as e:  # busy, or the disk: the next round tries again
                log.debug("WAL checkpoint skipped: %s", e)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


def _fallback_checkpoints(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}").fetchall()


class _BeginImmediate(SQLiteTransaction):
    def __enter__(self) -> SQLiteCursor:
        cursor = self.connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        return cursor


class SQLiteStore(SQLiteDatastore):
    """The library's SQLite datastore, whose transactions that commit begin IMMEDIATE.

    Such a transaction takes the file's write lock at BEGIN, waiting up to the lock timeout
    for a writer of another process (a rebuild beside the live service, a second application
    on the same file). Begun the library's way (a deferred BEGIN), a transaction that read
    before it wrote (a consumer's batch, a rebuild's) failed at once with "database is
    locked" whenever another connection had committed in between: SQLite cannot turn a read
    snapshot that is no longer the latest into a write, and does not wait. Within a process
    the library's writer lock already lets one writer at a time through; reads are
    unchanged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wal = _WalFile(self.pool.db_name)

    @contextmanager
    def transaction(self, *, commit: bool, synced: bool = True) -> Iterator[SQLiteCursor]:
        """`synced=False`: a commit that returns once its pages are in the WAL, before they
        reach the disk (`synchronous=NORMAL` for this transaction only); it survives the
        process crashing, not the machine losing power, until `sync`. For a consumer's batch,
        whose messages are acknowledged only after a `sync`: anything lost is delivered
        again."""
        if not commit:
            with super().transaction(commit=False) as cursor:
                yield cursor
            return
        with self.get_connection(commit=True) as conn:
            sqlite_conn = conn._sqlite_conn
            if not synced and not self.pool.is_sqlite_memory_mode:
                level = sqlite_conn.execute("PRAGMA synchronous").fetchone()[0]
                sqlite_conn.execute("PRAGMA synchronous=NORMAL")
            else:
                level = None
            try:
                with _BeginImmediate(conn, commit=True) as cursor, cursor:
                    yield cursor
            finally:
                if level is not None:
                    _restore_synchronous(sqlite_conn, int(level))

    def sync(self) -> None:
        """Make every transaction committed so far durable, synced or not: the WAL's fsync."""
        if not self.pool.is_sqlite_memory_mode:
            self._wal.sync()

    def close(self) -> None:
        super().close()
        wal = getattr(self, "_wal", None)  # the library's __del__ may close a half-made one
        if wal is not None:
            wal.close()


def _restore_synchronous(conn: sqlite3.Connection, level: int) -> None:
    """Put the connection's `synchronous` back: the next transaction on it may be one that
    must reach the disk before it is answered. SQLite refuses to change it inside a
    transaction, which a failed commit may have left open."""
    try:
        conn.execute(f"PRAGMA synchronous={level}")
    except sqlite3.Error:
        with contextlib.suppress(sqlite3.Error):
            conn.rollback()
        conn.execute(f"PRAGMA synchronous={level}")


class _WalFile:
    """The write-ahead log of an SQLite file, to fsync (on Linux an fsync through any
    descriptor of a file writes all of it). SQLite removes the WAL when its last connection
    closes, after copying it into the database and syncing that: a missing WAL has nothing
    left to sync, and a new one is opened when it comes back."""

    def __init__(self, db_name: str) -> None:
        path = db_name
        if path.startswith("file:"):
            path = unquote(urlparse(path).path)
        self.path = f"{path}-wal"
        self._lock = threading.Lock()
        self._fd: int | None = None

    def sync(self) -> None:
        with self._lock:
            try:
                if self._fd is not None and os.fstat(self._fd).st_ino != os.stat(self.path).st_ino:
                    self._close()
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self._close()
                return
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class SQLiteStoreFactory(SQLiteFactory):
    """The library's SQLite persistence (its recorders, its settings), on an `SQLiteStore`."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        library = self.datastore  # made from the same settings; nothing opened yet
        self.datastore = SQLiteStore(
            library.pool.db_name,
            lock_timeout=library.pool.lock_timeout,
            single_row_tracking=library.single_row_tracking,
            originator_id_type=library.originator_id_type,
        )
        library.close()


class ServiceApplication(Application):
    """Base of every service's Application: configured only from our settings."""

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # Deliberately not merged with os.environ: the library's own keys (and their
        # application-prefixed variants) must not change where a service stores its events.
        values = dict(type(self).env)
        if type(self).is_snapshotting_enabled or type(self).snapshotting_intervals:
            values["IS_SNAPSHOTTING_ENABLED"] = "y"
        values.update(env or {})
        return Environment(name, values)

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        datastore = getattr(self.recorder, "datastore", None)
        self.fail_fast: FailFast | None = None
        if isinstance(datastore, PostgresDatastore):
            # `_check` is the pool's `check=` argument, which the library sets for pre-ping.
            datastore.pool._check = partial(check_if_spoken_to, pool=datastore.pool)
            self.fail_fast = FailFast(datastore.pool)
            datastore.pool.getconn = self.fail_fast.getconn  # type: ignore[method-assign]
        self._checkpointer: WalCheckpointer | None = None
        if isinstance(datastore, SQLiteDatastore) and not datastore.pool.is_sqlite_memory_mode:
            self._checkpointer = WalCheckpointer(datastore, self.name)
        if self.snapshots is not None and isinstance(
            self.recorder, SQLiteStoreRecorder | PostgresStoreRecorder
        ):
            self.recorder.snapshot_recorder = self.snapshots.recorder  # type: ignore[assignment]
        # Called with the notifications of every save, once it committed (the relay's `offer`).
        self.on_recorded: list[Callable[[Sequence[Notification]], None]] = []

    def _notify(self, recordings: list[Any]) -> None:
        """The library's hook after every save that recorded events (the writer's, the
        policies'): hands what was just committed to whoever follows the log."""
        if recordings and self.on_recorded:
            notifications = [r.notification for r in recordings]
            for follow in self.on_recorded:
                try:
                    follow(notifications)
                except Exception:  # the events are committed: the relay reads them anyway
                    log.exception("following a save failed")

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """`Application.save`, less the two isinstance checks per aggregate against runtime
        Protocols in `collect_events` (20-30 µs each on Python 3.11, as much as recording the
        event), and with the snapshots due written in the same transaction as the events: the
        same events, recordings and notifications."""
        if not all(isinstance(obj, Aggregate) for obj in objs):
            return super().save(*objs, **kwargs)
        processing = collect(objs, **kwargs)
        snapshots = self._snapshots_due(processing)
        if snapshots:
            processing.saved_kwargs["snapshots"] = snapshots
        recordings = self._record(processing)
        self._notify(recordings)
        self.notify(processing.events)  # the library's deprecated hook, called as it does
        return recordings

    def _snapshots_due(self, processing_event: ProcessingEvent[Any]) -> list[StoredEvent]:
        """A snapshot of each aggregate whose events in this save reached a multiple of its
        class's interval, taken from the aggregate as saved (its last version in the save), so
        nothing is read back. They go in with the events: a snapshot costs a row in the
        batch's transaction rather than a transaction and a sync of its own, and a save that
        fails keeps none. A snapshot only speeds up loading, so one that cannot be made is
        skipped (the next interval takes one), never a failed save."""
        intervals = self.snapshotting_intervals
        if not (self.snapshots and intervals):
            return []
        due: dict[UUID, Any] = {}
        for event in processing_event.events:
            aggregate = processing_event.aggregates.get(event.originator_id)
            interval = intervals.get(type(aggregate)) if aggregate is not None else None
            if interval and event.originator_version % interval == 0:
                due[event.originator_id] = aggregate
        snapshots: list[StoredEvent] = []
        for aggregate in due.values():
            try:
                snapshots.append(self._snapshot_of(aggregate))
            except Exception:
                log.warning("snapshot of %s skipped", aggregate.id, exc_info=True)
        return snapshots

    def _snapshot_of(self, aggregate: Aggregate) -> StoredEvent:
        """The aggregate's snapshot, as the store keeps it (`take_snapshot`, from memory)."""
        cls = getattr(type(aggregate), "Snapshot", type(self).snapshot_class)
        assert self.snapshots is not None and cls is not None
        return self.snapshots.mapper.to_stored_event(cls.take(aggregate))

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        super().close()

    def save_answers(self, records: list[IdempotencyRecord]) -> None:
        if records:
            self.recorder.insert_answers(records)  # type: ignore[attr-defined]

    def find_answer(self, key: str) -> StoredAnswer | None:
        return self.recorder.find_answer(key)  # type: ignore[attr-defined, no-any-return]

    def record_inbox(self, records: Sequence[InboxRecord]) -> None:
        self.recorder.record_inbox(records)  # type: ignore[attr-defined]

    def find_lookup(self, kind: str, key: str) -> str | None:
        return self.recorder.find_lookup(kind, key)  # type: ignore[attr-defined, no-any-return]

    def find_document(self, kind: str, key: str) -> dict[str, Any] | None:
        return self.recorder.find_document(kind, key)  # type: ignore[attr-defined, no-any-return]

    def add_missing_documents(self, documents: Sequence[Document]) -> None:
        self.recorder.add_missing_documents(documents)  # type: ignore[attr-defined]

    def count_documents(self, kind: str) -> int:
        return self.recorder.count_documents(kind)  # type: ignore[attr-defined, no-any-return]

    def count_lookups(self, kind: str) -> int:
        return self.recorder.count_lookups(kind)  # type: ignore[attr-defined, no-any-return]

    def lookup_values(self, kind: str) -> list[str]:
        """The aggregates that hold keys of `kind`."""
        return self.recorder.lookup_values(kind)  # type: ignore[attr-defined, no-any-return]

    def documents_of(
        self, kind: str, owner: UUID | str, *, before: int | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """An owner's documents of `kind`, highest `seq` first, below `before` if given."""
        bound = 2**62 if before is None else before
        return self.recorder.documents_of(kind, str(owner), bound, limit)  # type: ignore[attr-defined, no-any-return]

    def ping(self) -> None:
        self.recorder.ping()  # type: ignore[attr-defined]


def check_if_spoken_to(
    conn: psycopg.Connection[Any], pool: ConnectionPool[Any] | None = None
) -> None:
    """The pool's check of each PostgreSQL connection it hands out, in place of the library's
    pre-ping (a round trip to the server every time: a fifth of the writer's time under load).
    An idle connection has nothing to read; when its socket has, the server closed it (a
    restart, a killed backend) or sent a notice, and only then is it pinged. A dead one is
    refused here, and the pool hands out another."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if not readable:
        return
    try:
        ConnectionPool.check_connection(conn)
    except psycopg.Error:
        if pool is not None:
            # A server that closed one connection (a restart) closed the idle ones beside it
            # too: the pool tests them all now and replaces the dead, so that its next try
            # gets a live one instead of backing off (1 s, 2 s, ...) over each dead one.
            pool.check()
        raise


class StoreUnreachable(PersistenceError):
    """PostgreSQL was found unreachable and still gives no connection. Not an
    `OperationalError`, so the library does not retry the call: it fails at once."""


class FailFast:
    """While PostgreSQL is unreachable, a store call waits `FAIL_FAST_WAIT_S` for a connection
    instead of the pool's whole timeout (`OKR_DATABASE_WAIT_S`).

    The library retries each call ten times on a connection error, so during an outage every
    read and every save waited ten pool timeouts (50 s at the default 5 s) before the client got
    its 503, and the writer held every other command for as long. After a connection wait that
    timed out while the pool's own attempts to connect were failing, the store is taken as
    unreachable: the next calls wait briefly and then raise `StoreUnreachable`, which the
    library does not retry, so a request answers 503 at once. The first call that gets a
    connection (the pool reconnects in the background) ends it. A wait that timed out with no
    failed connection attempt is a busy pool, not an outage, and changes nothing."""

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self._pool = pool
        self._getconn = pool.getconn
        self.unreachable = False
        self._errors = self._connection_errors()

    def _connection_errors(self) -> int:
        return int(self._pool.get_stats().get("connections_errors", 0))

    def getconn(self, timeout: float | None = None) -> Any:
        was_unreachable = self.unreachable
        if was_unreachable:
            timeout = min(timeout or FAIL_FAST_WAIT_S, FAIL_FAST_WAIT_S)
        try:
            conn = self._getconn(timeout)
        except PoolTimeout as e:
            errors = self._connection_errors()
            if errors > self._errors:
                if not self.unreachable:
                    log.warning("PostgreSQL unreachable: store calls fail fast until it is back")
                self.unreachable = True
            self._errors = errors
            if was_unreachable and self.unreachable:
                raise StoreUnreachable(f"PostgreSQL is unreachable: {e}") from e
            raise
        if self.unreachable:
            self.unreachable = False
            self._errors = self._connection_errors()
            log.info("PostgreSQL reachable again")
        return conn


def store_env(settings: ServiceSettings) -> dict[str, str]:
    """The library's settings for a service's store, from ours."""
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return {
            "PERSISTENCE_MODULE": "shared.store:SQLiteStoreFactory",
            "SQLITE_DBNAME": str(settings.data_dir / f"{settings.service}.db"),
            "SQLITE_LOCK_TIMEOUT": "10",
            "APPLICATION_RECORDER_TOPIC": "shared.store:SQLiteStoreRecorder",
        }
    url = urlparse(settings.database_url.get_secret_value())
    ensure_schema(settings.database_url.get_secret_value(), settings.database_schema)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": unquote(url.path.lstrip("/")) or "postgres",
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_SCHEMA": settings.database_schema,
        "POSTGRES_POOL_SIZE": "4",
        "POSTGRES_MAX_OVERFLOW": "8",
        "POSTGRES_CONNECT_TIMEOUT": str(settings.database_wait_s),
        "POSTGRES_PRE_PING": "y",
        "APPLICATION_RECORDER_TOPIC": "shared.store:PostgresStoreRecorder",
    }


def ensure_schema(database_url: str, schema: str) -> None:
    """The library creates tables but not schemas: create the service's schema first, unless
    it is there. A service's own role (deploy/postgres/init.sh) owns its schema and may not
    create any, and PostgreSQL checks that right before it looks whether the schema exists."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if found.fetchone() is None:
            conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(schema)))

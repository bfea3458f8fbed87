"""Consuming other services' events with an exactly-once effect (DESIGN §5).

A `Consumer` is a JetStream durable pull consumer with explicit acks. It fetches a batch,
checks each message against the public envelope (`parse`), and hands the valid ones to an
`Inbox`, which applies them through a `Projector` in one transaction of the service's own
store, together with what it needs to recognise them again:

- per aggregate, the last version applied: an event at or below it is a duplicate (a
  redelivery, a relay's republish after a crash, a replay) and changes nothing; an event more
  than one above it arrived before its predecessor and is handed back to NATS to come again a
  little later (`nak` with a delay), so per-aggregate order holds even if the relay's
  republishing ever reorders the stream;
- per source, the highest sequence applied: how far the consumer has got, for lag and for
  read-your-writes (`wait_for`).

Only after that transaction commits are the messages acknowledged. A crash between commit and
ack means a redelivery, which the versions turn into a no-op. A message that is not a valid
envelope, has a type the contract (`shared.contract.events`) does not know, data that breaks
its published schema, or data the projector cannot use, is terminated (`term`: JetStream stops
redelivering it and emits a MSG_TERMINATED advisory), counted and logged: it never blocks the
stream. A store that is down makes the whole batch come again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from functools import cached_property
from typing import Any, Protocol
from uuid import UUID

import orjson
import pydantic
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, PersistenceError
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    RawStreamMsg,
    SequenceInfo,
)
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from shared.contract import PREVIOUS_HEADER, UUID_TEXT
from shared.contract.events import UnknownEventType, check_data
from shared.domain import CommandContext, DomainError, command_context
from shared.holes import HOLE_WAIT_S, Hole, blocks, expired, merged, settle
from shared.logs import bind
from shared.nats import NatsLink, acknowledge_all
from shared.pull import ContinuousPull, Delivery, delivery
from shared.settings import DEFAULT_PORTS, ServiceSettings
from shared.sql import Database, Tx
from shared.store import (
    DELETE_INBOX_HOLES,
    INBOX_TABLES,
    INSERT_INBOX_HOLE,
    UPSERT_INBOX_POSITION,
    UPSERT_INBOX_SYNC,
    UPSERT_INBOX_VERSION,
    InboxRecord,
    ServiceApplication,
)
from shared.tasks import BlockingWorker, stop_task
from shared.telemetry import (
    CONSUMER_APPLIED,
    CONSUMER_BATCH_SECONDS,
    CONSUMER_DUPLICATES,
    CONSUMER_FAILURES,
    CONSUMER_HOLES,
    CONSUMER_HOLES_EXPIRED,
    CONSUMER_LAG,
    CONSUMER_LAG_EVENTS,
    CONSUMER_LAG_SECONDS,
    CONSUMER_POSITION,
    CONSUMER_REDELIVERED,
    CONSUMER_REJECTED,
    CONSUMER_RESCHEDULED,
    POLICY_REFUSED,
)

log = logging.getLogger(__name__)

MAX_DATA_BYTES = 1024 * 1024
MAX_POLICY_ATTEMPTS = 5
LAG_MEASURE_EVERY_S = 5.0
# While events are owed or deliveries may have been lost, how often the server is asked how far
# the acknowledgements have got (`Consumer._settle_doubts`).
DOUBTS_CHECKED_EVERY_S = 0.25
# When the server does not answer that question, a warning at most this often.
NO_INFO_WARNED_EVERY_S = 60.0
# Subscribing with messages delivered and not acknowledged (a process before this one crashed
# with them), the consumer reads the stream itself from the acknowledgement floor up to the last
# delivered message and applies what it finds (`Consumer._recover`), rather than wait out the
# ack wait for them: at most this many stream messages, this many at a time.
RECOVER_AT_MOST = 4096
RECOVER_CHUNK = 64


# --- the envelope ---------------------------------------------------------------------------


# Aggregate versions an inbox keeps in memory (a few MB): enough for the cycles, objectives,
# key results and progresses of some 10,000 key results.
KNOWN_VERSIONS = 50_000


# Batches of up to this many events are sent as one script on PostgreSQL (`Database.batch`).
# Above it, the client-side binding costs more than the round trips it saves: a rebuild's
# batches of 1,000 events went from 5,200 to 3,300 events/s that way.
ONE_TRIP_EVENTS = 64


class InvalidMessage(Exception):
    """A message that is not a valid event envelope, or whose data cannot be applied."""


@dataclass(frozen=True)
class Received:
    """A validated CloudEvents envelope (DESIGN §4) as it came off the stream. An older
    version of an event type arrives lifted: `type` and `data` are the current version's."""

    id: str
    source: str
    type: str
    # The aggregate's id as `str(UUID)` writes it, whatever spelling the envelope used: the
    # inbox and the views key their rows by it, several times per event.
    aggregate_key: str
    aggregate_version: int
    sequence: int
    time: datetime
    data: dict[str, Any]
    actor: str
    correlation_id: str
    causation_id: str
    # The sequence of the event before this one in its source's log, as the relay's header
    # `Okr-Previous-Sequence` says (None for a message without it): see `shared/holes.py`.
    previous: int | None = None

    @cached_property
    def aggregate_id(self) -> UUID:
        """The aggregate's id, made only where a `UUID` is wanted (a policy, the catalogue)."""
        return UUID(self.aggregate_key)

    @property
    def service(self) -> str:
        return self.source.removeprefix("okr/")

    @cached_property
    def name(self) -> str:
        """The type without its version: `okr.goals.key_result.defined`."""
        return self.type.rsplit(".", 1)[0]

    @property
    def version(self) -> int:
        return int(self.type.rsplit(".v", 1)[1])


def _text(body: dict[str, Any], key: str, limit: int = 200) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidMessage(f"`{key}` must be a non-empty string of at most {limit} characters")
    return value


def _positive(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidMessage(f"`{key}` must be a positive integer")
    return value


def parse(
    subject: str, payload: bytes, msg_id: str | None = None, previous: str | None = None
) -> Received:
    """Check a message against the envelope contract; raise `InvalidMessage` if it breaks it.

    Trusts nothing: the source must be the service the subject names, the type must be the
    subject plus a version, the `Nats-Msg-Id` (when present) must name the same event, and
    the `Okr-Previous-Sequence` (when present) must be a sequence below the event's.
    """
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "okr" or not all(parts):
        raise InvalidMessage(f"subject {subject!r} is not okr.<service>.<aggregate>.<event>")
    if len(payload) > MAX_DATA_BYTES:
        raise InvalidMessage("message larger than 1 MiB")
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise InvalidMessage(f"not JSON: {e}") from e
    if not isinstance(body, dict):
        raise InvalidMessage("the envelope is not a JSON object")
    if body.get("specversion") != "1.0":
        raise InvalidMessage("`specversion` must be 1.0")
    source = _text(body, "source")
    if source != f"okr/{parts[1]}":
        raise InvalidMessage(f"source {source!r} does not match subject {subject!r}")
    event_type = _text(body, "type")
    name, _, version = event_type.rpartition(".v")
    if name != subject or not version.isdigit():
        raise InvalidMessage(f"type {event_type!r} does not match subject {subject!r}")
    aggregate_key = _text(body, "subject", 64)
    if not UUID_TEXT.fullmatch(aggregate_key):  # any other spelling `UUID` reads
        try:
            aggregate_key = str(UUID(aggregate_key))
        except ValueError as e:
            raise InvalidMessage("`subject` must be the aggregate's UUID") from e
    try:
        at = datetime.fromisoformat(_text(body, "time", 64))
    except ValueError as e:
        raise InvalidMessage("`time` must be an ISO 8601 timestamp") from e
    if at.tzinfo is None:
        raise InvalidMessage("`time` must carry a time zone")
    data = body.get("data")
    if not isinstance(data, dict):
        raise InvalidMessage("`data` must be a JSON object")
    if body.get("datacontenttype", "application/json") != "application/json":
        raise InvalidMessage("`datacontenttype` must be application/json")
    sequence = _positive(body, "sequence")
    if msg_id is not None and msg_id != f"{source}:{sequence}":
        raise InvalidMessage(f"Nats-Msg-Id {msg_id!r} does not match {source}:{sequence}")
    before = None if previous is None else _previous(previous, sequence)
    # The data must match the published schema of its type; an older version is lifted to
    # the current one, so projectors only ever see the latest shape.
    try:
        latest, data = check_data(event_type, data)
    except UnknownEventType as e:
        raise InvalidMessage(str(e)) from e
    except pydantic.ValidationError as e:
        error = e.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise InvalidMessage(f"{event_type}: data.{where}: {error['msg']}") from e
    # Made without the frozen dataclass's __init__, which sets each field through
    # `object.__setattr__`: 1.5 µs against 0.4 µs per event, on the consumer's event loop.
    # `tests/unit/test_envelope.py` holds the fields to the class's.
    received: Received = _new(Received)
    received.__dict__.update(
        id=_text(body, "id", 64),
        source=source,
        type=latest.type,
        aggregate_key=aggregate_key,
        aggregate_version=_positive(body, "aggregateversion"),
        sequence=sequence,
        time=at,
        data=data,
        actor=_text(body, "actor"),
        correlation_id=_text(body, "correlationid", 128),
        causation_id=_text(body, "causationid", 128),
        previous=before,
    )
    return received


def _previous(header: str, sequence: int) -> int:
    """The `Okr-Previous-Sequence` header's value: a sequence from 0 below the event's."""
    if not header.isascii() or not header.isdigit() or len(header) > 19:
        raise InvalidMessage(f"{PREVIOUS_HEADER} {header[:40]!r} is not a sequence")
    value = int(header)
    if value >= sequence:
        raise InvalidMessage(f"{PREVIOUS_HEADER} {value} is not below the sequence {sequence}")
    return value


def link(msg_id: str | None, previous: str | None, subject: str) -> tuple[str, int, int] | None:
    """(source, sequence, previous) of a message that was rejected, from its headers alone,
    if they name them (and its subject's service): what it settles in its source's order."""
    if msg_id is None or previous is None:
        return None
    source, _, number = msg_id.rpartition(":")
    parts = subject.split(".")
    if len(parts) < 2 or source != f"okr/{parts[1]}" or not number.isascii():
        return None
    if not number.isdigit() or len(number) > 19 or int(number) < 1:
        return None
    try:
        before = _previous(previous, int(number))
    except InvalidMessage:
        return None
    return source, int(number), before


_new = object.__new__


# --- applying, once -------------------------------------------------------------------------


class Projector(Protocol):
    """What a consumer applies events to. Runs on a worker thread, one batch at a time."""

    def tables(self) -> Sequence[str]:
        """CREATE TABLE IF NOT EXISTS statements of its view."""
        ...

    def load(self, tx: Tx) -> None:
        """Read from the store what it keeps in memory, replacing what it held: at start-up,
        and again after the store failed under a batch (whose commit may have happened)."""
        ...

    def apply(self, tx: Tx, event: Received) -> None:
        """Apply one event inside the batch's transaction. Raise `InvalidMessage` for data it
        cannot use; any other exception except the store's is treated the same way."""
        ...

    def flush(self, tx: Tx) -> None:
        """Write what `apply` held back, once per batch, before the batch's inbox records (a
        projector may write as it applies and have nothing to flush)."""
        ...

    def committed(self) -> None:
        """The batch's transaction committed: publish what it staged."""
        ...

    def rolled_back(self) -> None:
        """The batch's transaction rolled back: forget what it staged."""
        ...


class Outcome(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    EARLY = "early"  # its predecessor has not been applied yet: deliver again later
    INVALID = "invalid"


class Projectors:
    """Several projectors fed by one consumer, in one transaction."""

    def __init__(self, *projectors: Projector) -> None:
        self.projectors = projectors

    def tables(self) -> Sequence[str]:
        return [t for p in self.projectors for t in p.tables()]

    def load(self, tx: Tx) -> None:
        for p in self.projectors:
            p.load(tx)

    def apply(self, tx: Tx, event: Received) -> None:
        for p in self.projectors:
            p.apply(tx, event)

    def flush(self, tx: Tx) -> None:
        for p in self.projectors:
            p.flush(tx)

    def committed(self) -> None:
        for p in self.projectors:
            p.committed()

    def rolled_back(self) -> None:
        for p in self.projectors:
            p.rolled_back()


class LostCommits(PersistenceError):
    """Batches this process committed are not in the store: a PostgreSQL server that crashed
    before flushing them. What it keeps in memory is ahead of the store; see `Inbox.sync`."""


class SyncUnconfirmed(PersistenceError):
    """A PostgreSQL sync that did not complete (the server went away): nothing is known lost,
    and nothing is acknowledged until a later sync confirms the commits."""


class _TooMany(Exception):
    """More stream messages to read back than `RECOVER_AT_MOST`."""


class _Poison(Exception):
    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


# (source, sequence, previous) of a message rejected before it reached an inbox, named by its
# headers: settled all the same, in its source's order (`link`).
Link = tuple[str, int, int]


@dataclass
class _Settled:
    """What a batch settled in each source's order (`shared/holes.py`): the highest sequence
    settled per source, and the holes of the sources whose holes changed."""

    tops: dict[str, int]
    holes: dict[str, list[Hole]]
    expired: int = 0  # holes given up


def _settle_all(
    consumer: str,
    links: Iterable[tuple[str, int, int | None]],
    positions: Mapping[str, int],
    holes: Mapping[str, list[Hole]],
    wait: float,
    *,
    expire: bool = True,
) -> _Settled:
    """Settle (source, sequence, previous)s against the positions and holes held before
    them; holes open longer than `wait` expire (logged), unless not to `expire` now."""
    now = time.time()
    working: dict[str, list[Hole]] = {}
    for source, open_holes in holes.items() if expire else ():
        kept, dropped = expired(open_holes, now, wait)
        if dropped:
            working[source] = kept
            log.warning(
                "consumer %s: %s's sequences %s never came in %.0f s; positions past them"
                " count as reached",
                consumer,
                source,
                ", ".join(f"{h.after + 1}-{h.through}" for h in dropped),
                wait,
            )
    given_up = sum(len(holes[s]) - len(kept) for s, kept in working.items())
    tops: dict[str, int] = {}
    # By (source, sequence) alone: one event twice in a batch may say its predecessor once
    # and not the other time, and None does not compare with a number.
    for source, sequence, previous in sorted(links, key=_place):
        top = tops.get(source, positions.get(source, 0))
        current = working.get(source, holes.get(source, []))
        if not current and (previous is None or previous <= top):
            tops[source] = max(top, sequence)  # in order, as nearly always
            continue
        after, tops[source] = settle(current, top, sequence, previous, now)
        if after != current:
            working[source] = after
    changed = {s: h for s, h in working.items() if h != holes.get(s, [])}
    return _Settled(tops, changed, given_up)


def _place(link: tuple[str, int, int | None]) -> tuple[str, int]:
    return link[0], link[1]


def _write_holes(tx: Tx, consumer: str, changed: Mapping[str, list[Hole]]) -> None:
    for source, open_holes in changed.items():
        tx.execute(DELETE_INBOX_HOLES, (consumer, source))
        for hole in open_holes:
            tx.execute(INSERT_INBOX_HOLE, (consumer, source, *hole))


def _read_holes(tx: Tx, consumer: str) -> dict[str, list[Hole]]:
    rows = tx.execute(
        "SELECT source, after_seq, through_seq, opened FROM {t}inbox_holes WHERE consumer = ?"
        " ORDER BY source, after_seq",
        (consumer,),
    ).fetchall()
    holes: dict[str, list[Hole]] = {}
    for r in rows:
        hole = Hole(int(r["after_seq"]), int(r["through_seq"]), float(r["opened"]))
        holes.setdefault(r["source"], []).append(hole)
    return holes


class Inbox:
    """Applies batches of events through a projector, each event once in effect."""

    def __init__(
        self,
        db: Database,
        consumer: str,
        projector: Projector,
        *,
        hole_wait: float = HOLE_WAIT_S,
    ) -> None:
        self.db = db
        self.consumer = consumer
        self.projector = projector
        # Per source, what this consumer is past and still lacks (`shared/holes.py`), and how
        # long a hole holds readers.
        self.holes: dict[str, list[Hole]] = {}
        self.hole_wait = hole_wait
        self.holes_expired = 0  # holes given up since the start (committed)
        # A batch commits without waiting for the disk (the reads see it at once); the
        # consumer acknowledges its messages only after `sync`, shared by the batches of a
        # short while: one flush for many commits. Lost by a power cut (or a PostgreSQL
        # server's crash), unacknowledged messages are delivered again.
        self.defers_sync = db.defers_sync
        self.positions: dict[str, int] = {}
        # Events this consumer's committed batches applied, as the store counts them
        # (`inbox_positions.applied`): what a sync must find there.
        self.applied = 0
        # The committed version per aggregate, the most recently applied first out: one
        # process applies a consumer's events (one process per service), so these stay those
        # of the store, and a batch of known aggregates needs no read before its writes.
        self._known: OrderedDict[tuple[str, str], int] = OrderedDict()
        # Set when the store failed under a batch. Its commit may have happened all the same
        # (PostgreSQL committed, and the answer was lost with the connection): then what is
        # kept in memory lags the store, and the batch, delivered again, would be applied a
        # second time on stale states. So it is all read again before the next batch.
        self._stale = False

    def setup(self) -> None:
        self.db.create([*INBOX_TABLES, *self.projector.tables()])
        with self.db.transaction(commit=False) as tx:
            self._load(tx)

    def _load(self, tx: Tx) -> None:
        """Read what is kept in memory from the store: the positions, the projector's view;
        the versions are read as batches need them. Read again after a failure, it first
        checks that no batch committed before it was lost."""
        rows = tx.execute(
            "SELECT source, position, applied FROM {t}inbox_positions WHERE consumer = ?",
            (self.consumer,),
        ).fetchall()
        applied = sum(int(r["applied"]) for r in rows)
        if self._stale:
            self._check(applied)
        self.positions = {r["source"]: int(r["position"]) for r in rows}
        self.holes = _read_holes(tx, self.consumer)
        self.applied = applied
        self._known.clear()
        self.projector.load(tx)

    def process(
        self, events: Sequence[Received], rejected: Sequence[Link] = ()
    ) -> tuple[list[Outcome], dict[int, str]]:
        """Apply a batch in one transaction. Returns an outcome per event (in the order
        given) and the reasons for those found invalid. `rejected`: messages of the batch
        rejected before, settled with it. Raises `PersistenceError` when the store fails:
        nothing was applied then."""
        invalid: dict[int, str] = {}
        while True:
            try:
                outcomes = self._process(events, invalid, rejected)
            except _Poison as p:
                # That event's data broke the projector: set it aside, redo the rest.
                invalid[p.index] = p.reason
                continue
            return outcomes, invalid

    def _process(
        self, events: Sequence[Received], invalid: dict[int, str], rejected: Sequence[Link]
    ) -> list[Outcome]:
        outcomes = [Outcome.INVALID] * len(events)
        # Within a batch, apply in log order per source whatever order the stream had.
        order = sorted(
            (i for i in range(len(events)) if i not in invalid),
            key=lambda i: (events[i].source, events[i].sequence),
        )
        try:
            # A small batch (a live one) in one round trip; a large one (a catch-up, a
            # rebuild) with the drivers' bulk paths, faster for many rows (COPY on PostgreSQL).
            small = len(order) <= ONE_TRIP_EVENTS
            synced = not self.defers_sync
            with (
                self.db.batch(synced=synced) if small else self.db.transaction(synced=synced)
            ) as tx:
                if self._stale:
                    self._load(tx)
                versions = self._versions(tx, [events[i] for i in order])
                positions: dict[str, int] = {}
                counts: dict[str, int] = {}
                applied: dict[tuple[str, str], int] = {}  # the newest version per aggregate
                for i in order:
                    ev = events[i]
                    key = (ev.source, ev.aggregate_key)
                    known = versions.get(key, 0)
                    if ev.aggregate_version <= known:
                        outcomes[i] = Outcome.DUPLICATE
                        continue
                    if ev.aggregate_version > known + 1:
                        outcomes[i] = Outcome.EARLY
                        self._known.pop(key, None)  # read it again from the store next time
                        continue
                    try:
                        with bind(
                            correlation_id=ev.correlation_id,
                            causation_id=ev.id,
                            actor=ev.actor,
                            event_id=ev.id,
                        ):
                            self.projector.apply(tx, ev)
                            log.debug("%s applied %s", self.consumer, ev.type)
                    except PersistenceError:
                        raise
                    except Exception as e:
                        raise _Poison(i, f"{type(e).__name__}: {e}") from e
                    versions[key] = ev.aggregate_version
                    applied[key] = ev.aggregate_version
                    outcomes[i] = Outcome.APPLIED
                    counts[ev.source] = counts.get(ev.source, 0) + 1
                self.projector.flush(tx)
                tx.executemany(
                    UPSERT_INBOX_VERSION,
                    [(self.consumer, s, a, v) for (s, a), v in applied.items()],
                )
                # Applied, duplicate or invalid, an event is settled: the position is the
                # highest sequence settled, and the holes follow (`shared/holes.py`).
                settled = _settle_all(
                    self.consumer,
                    itertools.chain(
                        (
                            (ev.source, ev.sequence, ev.previous)
                            for ev, outcome in zip(events, outcomes, strict=True)
                            if outcome is not Outcome.EARLY
                        ),
                        rejected,
                    ),
                    self.positions,
                    self.holes,
                    self.hole_wait,
                )
                for source, top in settled.tops.items():
                    count = counts.get(source, 0)
                    if count or top > self.positions.get(source, 0):
                        positions[source] = top
                        tx.execute(UPSERT_INBOX_POSITION, (self.consumer, source, top, count))
                _write_holes(tx, self.consumer, settled.holes)
        except _Poison:
            self.projector.rolled_back()  # rolled back before its commit: nothing is stale
            raise
        except BaseException:
            self.projector.rolled_back()
            self._stale = True
            raise
        self._stale = False
        self.applied += sum(counts.values())
        self.projector.committed()
        cache = self._known
        for key, version in applied.items():
            cache[key] = version
            cache.move_to_end(key)
        while len(cache) > KNOWN_VERSIONS:
            cache.popitem(last=False)
        for source, position in positions.items():
            self.positions[source] = max(self.positions.get(source, 0), position)
        if settled.holes:
            self.holes = merged(self.holes, settled.holes)
        self.holes_expired += settled.expired
        return outcomes

    def sync(self) -> None:
        """Make the batches committed so far durable (see `defers_sync`).

        On PostgreSQL, a commit that waits for the server's flush (and so for every commit
        before it) records what the store counts as applied, and that count must be what
        this process committed: a server that crashed (or was stopped in immediate mode)
        before flushing loses its latest commits, while the connection pool quietly connects
        again. Short of it, the process holds for applied what the store does not have:
        `LostCommits`, and nothing is acknowledged (the consumer stops, as for a failed
        fsync).

        A sync that could not be done there raises `SyncUnconfirmed`: the next one checks
        the same commits."""
        if not self.db.postgres:
            self.db.sync()
            return
        try:
            with self.db.transaction() as tx:
                row = tx.execute(
                    "SELECT COALESCE(SUM(applied), 0) AS n FROM {t}inbox_positions"
                    " WHERE consumer = ?",
                    (self.consumer,),
                ).fetchone()
                found = int(row["n"])
                tx.execute(UPSERT_INBOX_SYNC, (self.consumer, found))
        except PersistenceError as e:
            raise SyncUnconfirmed(str(e)) from e
        self._check(found)

    def _check(self, found: int) -> None:
        """`found` events applied by this consumer in the store, against what it committed.
        More is possible (a commit whose answer was lost did happen); fewer is not."""
        if found < self.applied:
            raise LostCommits(
                f"{self.consumer}: the store holds {found} applied events, this process"
                f" committed {self.applied}"
            )

    def _versions(self, tx: Tx, events: Iterable[Received]) -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] = {}
        ids_by_source: dict[str, set[str]] = {}
        for e in events:
            key = (e.source, e.aggregate_key)
            version = self._known.get(key)
            if version is not None:
                found[key] = version
            else:
                ids_by_source.setdefault(e.source, set()).add(key[1])
        for source, id_set in ids_by_source.items():
            ids = sorted(id_set)
            for start in range(0, len(ids), 200):
                chunk = ids[start : start + 200]
                # The whole key (consumer, source, id): an index seek per id. Without the
                # source, the query scans every version row of the consumer, which grows with
                # the history (and, on PostgreSQL, with the dead rows its updates leave).
                # Only placeholders are formatted in; the ids go in as parameters.
                where = (
                    "consumer = ? AND source = ?"
                    f" AND aggregate_id IN ({self.db.placeholders(len(chunk))})"
                )
                rows = tx.execute(
                    "SELECT aggregate_id, version FROM {t}inbox_versions WHERE " + where,  # noqa: S608
                    (self.consumer, source, *chunk),
                ).fetchall()
                for r in rows:
                    found[(source, r["aggregate_id"])] = int(r["version"])
        return found


# --- policies: events that cause events ----------------------------------------------------


class Policy(Protocol):
    """A reaction of a service to another service's events, whose effect is events of its own.
    Runs on a worker thread, inside the event's command context (actor and correlation id of
    the event; the event's id as causation)."""

    def react(self, event: Received) -> list[Aggregate]:
        """The aggregates the event creates or changes, not yet saved; [] for none. Raise a
        `DomainError` when the rules refuse what the event asks (recorded as handled, logged
        and counted), `InvalidMessage` for data it cannot use."""
        ...


class ProcessInbox:
    """Applies events through a `Policy`, each once in effect: the policy's new events and the
    inbox record of the event that caused them are saved in one transaction of the service's
    store (`app.save(..., inbox=...)`), so a crash can never leave one without the other."""

    # The library's saves wait for the disk: nothing to sync before acknowledging.
    defers_sync = False

    def __init__(
        self,
        app: ServiceApplication,
        consumer: str,
        policy: Policy,
        *,
        hole_wait: float = HOLE_WAIT_S,
    ) -> None:
        self.app = app
        self.db = Database(app)
        self.consumer = consumer
        self.policy = policy
        self.positions: dict[str, int] = {}
        self.holes: dict[str, list[Hole]] = {}
        self.hole_wait = hole_wait
        self.holes_expired = 0  # holes given up since the start (committed)

    def sync(self) -> None:
        """Nothing to do: see `defers_sync`."""

    def setup(self) -> None:
        with self.db.transaction(commit=False) as tx:
            rows = tx.execute(
                "SELECT source, position FROM {t}inbox_positions WHERE consumer = ?",
                (self.consumer,),
            ).fetchall()
            self.holes = _read_holes(tx, self.consumer)
        self.positions = {r["source"]: int(r["position"]) for r in rows}

    def process(
        self, events: Sequence[Received], rejected: Sequence[Link] = ()
    ) -> tuple[list[Outcome], dict[int, str]]:
        outcomes = [Outcome.INVALID] * len(events)
        invalid: dict[int, str] = {}
        order = sorted(range(len(events)), key=lambda i: (events[i].source, events[i].sequence))
        for i in order:
            outcome, reason = self._process_one(events[i])
            outcomes[i] = outcome
            if reason is not None:
                invalid[i] = reason
        # An applied event's holes were saved with its effect. What the others settled (a
        # duplicate, an invalid one, one rejected before) is recorded now, when it changed
        # anything: rarely.
        self._settle(
            [
                (ev.source, ev.sequence, ev.previous)
                for ev, outcome in zip(events, outcomes, strict=True)
                if outcome in (Outcome.DUPLICATE, Outcome.INVALID)
            ]
            + list(rejected)
        )
        return outcomes, invalid

    def _settle(self, links: list[tuple[str, int, int | None]]) -> None:
        settled = _settle_all(self.consumer, links, self.positions, self.holes, self.hole_wait)
        moved = {s: t for s, t in settled.tops.items() if t > self.positions.get(s, 0)}
        if moved or settled.holes:
            with self.db.transaction() as tx:
                for source, top in moved.items():
                    tx.execute(UPSERT_INBOX_POSITION, (self.consumer, source, top, 0))
                _write_holes(tx, self.consumer, settled.holes)
            self.positions |= moved
            self.holes = merged(self.holes, settled.holes)
            self.holes_expired += settled.expired

    def _version(self, event: Received) -> int:
        with self.db.transaction(commit=False) as tx:
            row = tx.execute(
                "SELECT version FROM {t}inbox_versions WHERE consumer = ? AND source = ?"
                " AND aggregate_id = ?",
                (self.consumer, event.source, event.aggregate_key),
            ).fetchone()
        return 0 if row is None else int(row["version"])

    def _process_one(self, event: Received) -> tuple[Outcome, str | None]:
        with bind(
            correlation_id=event.correlation_id,
            causation_id=event.id,
            actor=event.actor,
            event_id=event.id,
        ):
            return self._react(event)

    def _react(self, event: Received) -> tuple[Outcome, str | None]:
        context = CommandContext(event.actor, event.correlation_id, event.id)
        for _attempt in range(MAX_POLICY_ATTEMPTS):
            known = self._version(event)
            if event.aggregate_version <= known:
                return Outcome.DUPLICATE, None
            if event.aggregate_version > known + 1:
                return Outcome.EARLY, None
            try:
                with command_context(context):
                    aggregates = self.policy.react(event)
            except DomainError as e:
                POLICY_REFUSED.labels(self.consumer).inc()
                log.warning("policy %s refused %s %s: %s", self.consumer, event.type, event.id, e)
                aggregates = []
            except PersistenceError:
                raise
            except Exception as e:
                return Outcome.INVALID, f"{type(e).__name__}: {e}"
            # Its place in its source's order, saved with its effect.
            settled = _settle_all(
                self.consumer,
                [(event.source, event.sequence, event.previous)],
                self.positions,
                self.holes,
                self.hole_wait,
                expire=False,
            )
            holes = settled.holes.get(event.source)
            record = InboxRecord(
                self.consumer,
                event.source,
                event.aggregate_key,
                event.aggregate_version,
                event.sequence,
                None if holes is None else tuple(holes),
            )
            try:
                if aggregates:
                    self.app.save(*aggregates, inbox=[record])
                else:
                    self.app.record_inbox([record])
            except IntegrityError:
                continue  # another writer got there first: look again
            if aggregates:
                log.info(
                    "policy %s: %s caused changes to %d aggregates",
                    self.consumer,
                    event.type,
                    len(aggregates),
                )
            self.positions[event.source] = max(self.positions.get(event.source, 0), event.sequence)
            if holes is not None:
                self.holes = merged(self.holes, {event.source: holes})
            return Outcome.APPLIED, None
        raise PersistenceError(f"{event.type} {event.id} kept conflicting; will retry")


# --- the JetStream side ---------------------------------------------------------------------


_UNKNOWN = Delivery(1, 0, 0, 0)


def subject_matches(subject: str, pattern: str) -> bool:
    """Whether a NATS subject matches a filter (`*`: one token, `>`: one or more at the end)."""
    tokens = subject.split(".")
    wanted = pattern.split(".")
    for i, w in enumerate(wanted):
        if w == ">":
            return len(tokens) > i
        if i >= len(tokens) or (w != "*" and w != tokens[i]):
            return False
    return len(tokens) == len(wanted)


def _delivery(msg: Msg) -> Delivery:
    """The message's delivery (the pull hands out stream messages only)."""
    return delivery(msg.reply) or _UNKNOWN


def _delivered(msg: Msg) -> int:
    """Times the message was delivered."""
    return _delivery(msg).delivered


def _pending(msg: Msg) -> int:
    """Messages the consumer had pending after this one."""
    return _delivery(msg).pending


@dataclass
class _Batch:
    """A batch taken from the stream: its messages, the events of those that passed the
    contract, in the same order as their carriers, and the seconds checking them took."""

    msgs: list[Msg]
    events: list[Received] = field(default_factory=list)
    carriers: list[Msg] = field(default_factory=list)
    seconds: float = 0.0
    # Messages rejected by the contract whose headers name their place in their source's log.
    rejected: list[Link] = field(default_factory=list)

    def join(self, later: _Batch) -> None:
        """Add a batch taken after this one."""
        self.msgs += later.msgs
        self.events += later.events
        self.carriers += later.carriers
        self.seconds += later.seconds
        self.rejected += later.rejected


class Consumer:
    """A durable pull consumer feeding an `Inbox`, reconnecting and backing off by itself."""

    def __init__(
        self,
        service: str,
        name: str,
        link: NatsLink,
        inbox: Inbox | ProcessInbox,
        *,
        stream: str,
        subjects: list[str],
        batch_size: int = 256,
        ack_wait: float = 30.0,
        poll_interval: float = 1.0,
        early_delay: float = 0.5,
        linger: float = 0.0,
        sync_every: float = 0.05,
        on_sync_failed: Callable[[], None] | None = None,
    ) -> None:
        self.service = service
        self.name = name
        self.link = link
        self.inbox = inbox
        self.stream = stream
        self.subjects = subjects
        self.batch_size = batch_size
        self.ack_wait = ack_wait
        self.poll_interval = poll_interval
        self.early_delay = early_delay
        self.linger = linger
        # Readers waiting in `wait_for` (read-your-writes), and the sign that one came: a
        # lingering batch is applied at once for them.
        self._readers = 0
        self._reader_came = asyncio.Event()
        self.sync_every = sync_every
        # Applied messages whose batches committed without waiting for the disk (an inbox
        # that `defers_sync`), with their outcomes: settled once a sync has made them
        # durable, at most `sync_every` seconds after the first of them committed.
        self._unsynced: deque[tuple[Msg, Outcome, str | None]] = deque()
        self._unsynced_since = 0.0
        # A sync that failed leaves commits the disk may never have, which this process
        # holds for applied: only a process started afresh from the store can be trusted
        # with their redelivery. By default the process is asked to stop (SIGTERM).
        self._on_sync_failed = on_sync_failed or _stop_this_process
        self._sync_failed: BaseException | None = None
        self.pending = 0
        self.delivered = 0
        self.caught_up = False
        self.last_error: str | None = None
        self.last_event_time: dict[str, datetime] = {}
        self._lag_measured = 0.0
        self.last_progress = time.monotonic()
        self._advanced = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._worker = BlockingWorker(f"{service}-{name}")
        # Read-your-writes (`wait_for`). The positions as released to readers: the inbox's,
        # copied once a batch's outcomes are settled here; and the inbox's holes with them.
        self._released: dict[str, int] = {}
        self._holes: dict[str, list[Hole]] = {}
        self._holes_expired = 0  # the inbox's count, as last counted in the metric
        # Events taken but not applied, handed back to come again (a failed batch, one that
        # arrived early): per source, sequence -> stream sequence. A position at or past one
        # of them is not reached, whatever was applied after it.
        self._owed: dict[str, dict[int, int]] = {}
        # Deliveries that may have been lost on the way (a gap in the consumer's delivery
        # sequence; messages a process before this one took and did not acknowledge): no
        # position counts as reached until the server's acknowledgement floor has passed the
        # stream sequence delivered by then (`_doubt_mark`, None until asked). Until the first
        # subscription has shown what is outstanding, nothing is known.
        self._doubtful = True
        self._doubt_mark: int | None = None
        self._next_delivery: int | None = None
        self._doubts_checked = 0.0
        self._lost = False  # deliveries went astray since the last look
        self._info_warned = -NO_INFO_WARNED_EVERY_S

    @classmethod
    def for_service(
        cls,
        settings: ServiceSettings,
        name: str,
        link: NatsLink,
        inbox: Inbox | ProcessInbox,
        subjects: list[str],
        *,
        linger: float = 0.0,
    ) -> Consumer:
        """The service's consumer `name` on `subjects`, tuned by the `OKR_CONSUMER_*` settings.
        `linger`: how long a partial batch waits for more messages before it is applied (fewer
        commits under a steady stream), unless a reader waits for a position (`wait_for`)."""
        return cls(
            settings.service,
            name,
            link,
            inbox,
            stream=settings.stream_name,
            subjects=subjects,
            batch_size=settings.consumer_batch_size,
            ack_wait=settings.consumer_ack_wait_s,
            poll_interval=settings.consumer_poll_interval_s,
            linger=linger,
            sync_every=settings.consumer_sync_every_s,
        )

    @property
    def durable(self) -> str:
        return f"{self.service}-{self.name}"

    @property
    def current(self) -> bool:
        """Whether the consumer has, as far as it can tell, applied everything in the stream:
        connected, no error, and nothing left to fetch at its last look."""
        return self.caught_up and self.last_error is None and self.link.connected

    def follows(self, service: str) -> bool:
        """Whether this consumer receives the events of `service`."""
        return any(
            s in ("okr.>", f"okr.{service}.>") or s.startswith(f"okr.{service}.")
            for s in self.subjects
        )

    @property
    def positions(self) -> dict[str, int]:
        return self.inbox.positions

    # --- control ------------------------------------------------------------------------

    async def start(self) -> None:
        # At 0 from the start: an alert on its increase sees the first one.
        CONSUMER_HOLES_EXPIRED.labels(self.service, self.name)
        await self._worker.run(self.inbox.setup)
        self._release()
        self._task = asyncio.create_task(self.run(), name=f"{self.durable}-consumer")

    async def stop(self) -> None:
        self._stopping = True
        await stop_task(self._task)
        self._task = None
        await self._worker.close()

    def stuck_for(self) -> float:
        """Seconds with messages waiting and no progress (0 when caught up)."""
        if self.caught_up and self.last_error is None:
            return 0.0
        return time.monotonic() - self.last_progress

    def reached(self, source: str, sequence: int) -> bool:
        """Whether every event of `source` up to `sequence` that this consumer will apply has
        been applied, as far as it can know: its position is there, no event at or below it
        is owed or still to come (a hole: `shared/holes.py`), and no delivery may have been
        lost on the way."""
        if self._released.get(source, 0) < sequence or self._doubtful:
            return False
        owed = self._owed.get(source)
        if owed and min(owed) <= sequence:
            return False
        holes = self._holes.get(source)
        return not holes or not blocks(holes, sequence, time.time(), self.inbox.hole_wait)

    def _release(self) -> None:
        """Let readers see what the inbox committed: its positions, and its holes."""
        self._released.update(self.inbox.positions)
        self._holes = self.inbox.holes
        expired = self.inbox.holes_expired
        if expired > self._holes_expired:
            CONSUMER_HOLES_EXPIRED.labels(self.service, self.name).inc(
                expired - self._holes_expired
            )
        self._holes_expired = expired

    async def wait_for(self, source: str, sequence: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait (bounded) until events of `source` up to `sequence` have been applied."""

        def reached() -> bool:
            return self.reached(source, sequence)

        if reached():
            return True
        self._readers += 1
        self._reader_came.set()  # a lingering batch goes now
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with self._advanced:
                while not reached():
                    left = deadline - loop.time()
                    if left <= 0:
                        return False
                    # Woken by progress, or when a hole in the way expires.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._advanced.wait(), min(left, self._hole_expires_in(source))
                        )
        finally:
            self._readers -= 1
        return True

    def _hole_expires_in(self, source: str) -> float:
        """Seconds until the first of `source`'s open holes expires (inf without any)."""
        now = time.time()
        ends = [h.opened + self.inbox.hole_wait - now for h in self._holes.get(source, ())]
        return max(0.01, min((end for end in ends if end > 0), default=float("inf")))

    async def wait_for_progress(self, since: Mapping[str, int], timeout: float) -> bool:  # noqa: ASYNC109
        """Wait (bounded) until the positions have moved past `since` (a copy of `positions`
        taken earlier): until more events were applied. Whether they were. For followers that
        only need to know that something changed, such as the projections' live stream."""

        def moved() -> bool:
            return self.positions != since

        if moved():
            return True
        async with self._advanced:
            try:
                await asyncio.wait_for(self._advanced.wait_for(moved), timeout)
            except TimeoutError:
                return False
        return True

    # --- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self._stopping:
                    return
                if isinstance(e, LostCommits) and self._sync_failed is None:
                    self._stop_for_good(e)  # found by a batch, after a store failure
                if self._sync_failed is not None:
                    self.last_error = f"the store's sync failed: {self._sync_failed}"
                    self.caught_up = False
                    return  # nothing more is applied or acknowledged by this process
                CONSUMER_FAILURES.labels(self.service, self.name).inc()
                self.last_error = f"{type(e).__name__}: {e}"
                self.caught_up = False
                log.warning(
                    "consumer %s: %s: %s; retrying in %.1fs",
                    self.durable,
                    type(e).__name__,
                    e,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                delay = 0.1

    async def _subscribe(self) -> ContinuousPull:
        js = await self.link.wait()
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_ack_pending=max(1000, self.batch_size * 4),
            **(
                {"filter_subject": self.subjects[0]}
                if len(self.subjects) == 1
                else {"filter_subjects": self.subjects}
            ),
        )
        try:
            info = await js.add_consumer(self.stream, config)
        except NotFoundError as e:
            raise RuntimeError(f"stream {self.stream} not found") from e
        self._next_delivery = (info.delivered or SequenceInfo(0, 0)).consumer_seq + 1
        await self._settle_outstanding(js, info)
        assert self.link.nc is not None  # connected: `wait` returned
        pull = ContinuousPull(self.link.nc, self.stream, self.durable, batch=self.batch_size)
        await pull.start()
        return pull

    def _no_info(self, e: Exception) -> None:
        """The server did not say how far the acknowledgements have got (asked again soon):
        a warning at most once a minute, since readers wait on it (a user not allowed
        `$JS.API.CONSUMER.INFO` on its durable keeps them waiting until it subscribes again)."""
        now = time.monotonic()
        if now - self._info_warned < NO_INFO_WARNED_EVERY_S:
            log.debug("consumer %s: no consumer info: %s", self.durable, e)
            return
        self._info_warned = now
        log.warning(
            "consumer %s: no consumer info (%s: %s); reads with min_position wait on it",
            self.durable,
            type(e).__name__,
            e,
        )

    async def _recover_lost(self) -> None:
        """Deliveries went astray: read back from the stream what is unacknowledged, rather
        than wait for it to come again after the ack wait. Nothing may be applying."""
        self._lost = False
        try:
            js = await self.link.wait()
            info = await js.consumer_info(self.stream, self.durable)
        except Exception as e:  # the doubt stays, settled by the acknowledgement floor
            self._no_info(e)
            return
        await self._settle_outstanding(js, info)

    async def _settle_outstanding(self, js: JetStreamContext, info: ConsumerInfo) -> None:
        """From the server's account of the durable (at subscription, or after a gap): with
        nothing pending, whatever was owed or lost on the way was settled. Messages delivered
        and not acknowledged (handed back, held by a process that crashed, lost on the way)
        come again only after the ack wait: apply them now from the stream, or, if that
        cannot be done, doubt until they are in. Then wake the readers."""
        top = (info.delivered or SequenceInfo(0, 0)).stream_seq
        if not info.num_ack_pending:
            self._doubtful, self._doubt_mark = False, None
            self._owed.clear()
        else:
            self._doubtful, self._doubt_mark = True, top
            floor = (info.ack_floor or SequenceInfo(0, 0)).stream_seq
            if await self._recover(js, floor, top):
                self._doubtful, self._doubt_mark = False, None
        async with self._advanced:
            self._advanced.notify_all()

    async def _recover(self, js: JetStreamContext, floor: int, top: int) -> bool:
        """Read the stream messages after the acknowledgement floor `floor` up to the last
        delivered one `top` that this consumer takes, and apply them in stream order, as a
        batch would be. What was applied already is a duplicate and changes nothing; when the
        server hands the messages out again after the ack wait, each is a duplicate then. An
        early one is owed until it comes again. Whether every message was read: if not (too
        many, or NATS did not answer), readers cannot know what is missing."""
        early: list[tuple[Received, int]] = []
        read = applied = 0
        try:
            async for chunk in self._read_back(js, floor, top):
                events: list[Received] = []
                at: list[int] = []
                for sequence, msg in chunk:
                    try:
                        headers = msg.headers or {}
                        events.append(
                            parse(
                                msg.subject or "",
                                msg.data or b"",
                                headers.get("Nats-Msg-Id"),
                                headers.get(PREVIOUS_HEADER),
                            )
                        )
                    except InvalidMessage:
                        continue  # rejected when it comes again
                    at.append(sequence)
                read += len(events)
                applied += await self._apply_recovered(events, at, early)
        except _TooMany as e:
            log.warning(
                "consumer %s: more than %d stream messages to read back (%s); the "
                "unacknowledged ones come again after the ack wait",
                self.durable,
                RECOVER_AT_MOST,
                e,
            )
            return False
        except PersistenceError:
            raise
        except Exception as e:  # not answered: the doubt covers it
            log.warning("consumer %s: could not read the stream to recover: %s", self.durable, e)
            return False
        if early:
            # Their predecessors came later in the stream, and may be in now.
            again, early = early, []
            applied += await self._apply_recovered(
                [e for e, _ in again], [q for _, q in again], early
            )
        self._release()
        if read:
            log.info(
                "consumer %s: read back %d unacknowledged events from stream sequences %d to %d,"
                " applied %d (the rest were in already)%s",
                self.durable,
                read,
                floor + 1,
                top,
                applied,
                f"; {len(early)} still wait for their predecessors" if early else "",
            )
        return True

    async def _read_back(
        self, js: JetStreamContext, floor: int, top: int
    ) -> AsyncIterator[list[tuple[int, RawStreamMsg]]]:
        """The messages this consumer takes among stream sequences floor + 1 to top, in order,
        in chunks. A narrow range is read by sequence, a chunk's requests at once; a wide one
        (a sparse filter behind a busy stream) message by message, each request asking for
        the next one on a filter subject. Raises `_TooMany` past `RECOVER_AT_MOST`."""
        if top - floor <= RECOVER_AT_MOST:
            for start in range(floor + 1, top + 1, RECOVER_CHUNK):
                sequences = range(start, min(start + RECOVER_CHUNK, top + 1))
                stored = await asyncio.gather(*(self._stored(js, q) for q in sequences))
                yield [
                    (q, m)
                    for q, m in zip(sequences, stored, strict=True)
                    if m is not None and m.subject is not None and self._takes(m.subject)
                ]
            return
        found: dict[int, RawStreamMsg] = {}
        for subject in self.subjects:
            sequence = floor + 1
            while sequence <= top:
                try:
                    msg = await js.get_msg(self.stream, sequence, subject=subject, next=True)
                except NotFoundError:
                    break  # nothing more on that subject
                if msg.seq is None or msg.seq > top:
                    break
                found[msg.seq] = msg
                if len(found) > RECOVER_AT_MOST:
                    raise _TooMany(f"sequences {floor + 1} to {top}")
                sequence = msg.seq + 1
        ordered = sorted(found.items())
        for start in range(0, len(ordered), RECOVER_CHUNK):
            yield ordered[start : start + RECOVER_CHUNK]

    async def _apply_recovered(
        self, events: list[Received], at: list[int], early: list[tuple[Received, int]]
    ) -> int:
        """Apply events read from the stream at stream sequences `at`; the early ones are owed
        and added to `early`. How many were applied."""
        if not events:
            return 0
        outcomes, _invalid = await self._worker.run(self.inbox.process, events)
        for event, sequence, outcome in zip(events, at, outcomes, strict=True):
            if outcome is Outcome.EARLY:
                self._owed.setdefault(event.source, {})[event.sequence] = sequence
                early.append((event, sequence))
            elif self._owed:
                self._paid(event)
        applied = outcomes.count(Outcome.APPLIED)
        CONSUMER_APPLIED.labels(self.service, self.name).inc(applied)
        return applied

    async def _stored(self, js: JetStreamContext, sequence: int) -> RawStreamMsg | None:
        try:
            return await js.get_msg(self.stream, sequence)
        except NotFoundError:
            return None  # deleted (or past the stream's limits): nothing to apply

    def _takes(self, subject: str) -> bool:
        """Whether the consumer's subject filters take a message on `subject`."""
        return any(subject_matches(subject, f) for f in self.subjects)

    def followed_services(self) -> list[str]:
        return [s for s in DEFAULT_PORTS if self.follows(s)]

    async def _measure_lag(self) -> None:
        """Lag per source in events: how far the newest message of each followed service in
        the stream is ahead of what was applied (a distance in sequence numbers, which may
        count gaps). Metrics only; measured at most every few seconds."""
        now = time.monotonic()
        if now - self._lag_measured < LAG_MEASURE_EVERY_S:
            return
        self._lag_measured = now
        js = await self.link.wait()
        for service in self.followed_services():
            source = f"okr/{service}"
            try:
                last = await js.get_last_msg(self.stream, f"okr.{service}.>")
                newest = int(orjson.loads(last.data or b"{}").get("sequence", 0))
            except NotFoundError:
                newest = 0
            except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
                continue
            behind = max(0, newest - self.positions.get(source, 0))
            CONSUMER_LAG_EVENTS.labels(self.service, self.name, source).set(behind)

    async def _consume(self) -> None:
        """Pull, check and apply batches. The next batch is taken and checked on the event loop
        while the worker thread applies the one before (the store's own work runs without the
        GIL), and what arrives meanwhile joins it; batches are applied one at a time, in the
        order they came."""
        pull = await self._subscribe()
        applying: asyncio.Task[None] | None = None
        checked: _Batch | None = None  # taken and checked, not yet applying
        try:
            while not self._stopping:
                # In doubt, look again sooner: readers wait on the doubt's end.
                doubts = self._doubtful or bool(self._owed)
                wait = (
                    min(self.poll_interval, DOUBTS_CHECKED_EVERY_S)
                    if doubts
                    else self.poll_interval
                )
                if self._unsynced:
                    # Not past the moment their acknowledgements are due.
                    due = self._unsynced_since + self.sync_every - time.monotonic()
                    wait = max(0.0, min(wait, due))
                msgs = await pull.next(wait)
                if msgs and self.linger and len(msgs) < self.batch_size and not self._readers:
                    # A partial batch: let more join it, so that one commit serves them all;
                    # unless a reader waits for a position, now or meanwhile.
                    self._reader_came.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._reader_came.wait(), self.linger)
                    msgs += await pull.next(0, self.batch_size - len(msgs))
                if not msgs:
                    if applying is not None:
                        await applying  # caught up only once the last batch is in
                        applying = None
                    await self._sync_and_settle()
                    if self.link.connected:
                        self._idle()
                        await self._settle_doubts()
                    else:
                        self.caught_up = False
                    continue
                checked = await self._check(msgs)
                if applying is not None:
                    await applying
                    applying = None
                    # What arrived while the batch before was applied joins this one: one
                    # commit serves them all, and none of them waits for one batch more.
                    # (Taken right after the one before was handed over, this batch holds
                    # only what came during that moment.)
                    room = self.batch_size - len(checked.msgs)
                    if room > 0 and (more := await pull.next(0, room)):
                        checked.join(await self._check(more))
                if self._lost:
                    await self._recover_lost()
                applying, checked = asyncio.create_task(self._apply(checked)), None
                # Let it hand its batch to the worker thread now: taking and checking the next
                # batch does not yield to the loop, so the batch would otherwise wait for that
                # check, and the two would never overlap.
                await asyncio.sleep(0)
                await self._settle_doubts()
                await self._measure_lag()
        except asyncio.CancelledError:
            if applying is not None:
                applying.cancel()  # its call runs on; the inbox recognises a redelivery
            raise
        finally:
            if applying is not None:
                # Let a batch in flight settle its messages (its failure was handled there).
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await applying
            # What was applied is acknowledged once durable; if that fails, it comes again.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sync_and_settle()
            if checked is not None:
                # Not applied (the one before failed, or a stop): have it come again.
                await self._give_back(checked)
            await pull.stop()

    def _idle(self) -> None:
        self.caught_up = True
        self.pending = 0
        self.last_error = None
        CONSUMER_LAG.labels(self.service, self.name).set(0)
        for source in self.last_event_time:
            CONSUMER_LAG_SECONDS.labels(self.service, self.name, source).set(0)
        for service in self.followed_services():
            CONSUMER_LAG_EVENTS.labels(self.service, self.name, f"okr/{service}").set(0)

    async def _check(self, msgs: list[Msg]) -> _Batch:
        """Parse a batch's messages against the contract (there is at least one: the pull
        hands out stream messages only); those that break it are rejected."""
        started = time.perf_counter()
        self.delivered += len(msgs)
        batch = _Batch(msgs)
        for msg in msgs:
            d = _delivery(msg)
            if d.delivered > 1:
                CONSUMER_REDELIVERED.labels(self.service, self.name).inc()
            if self._next_delivery is not None and d.consumer > self._next_delivery:
                # Deliveries between went astray (a connection lost with messages on their
                # way): they come again after the ack wait, and until then none is known, or
                # they are read back from the stream before this batch is applied.
                self._doubt(None)
                self._lost = True
            self._next_delivery = max(self._next_delivery or 0, d.consumer + 1)
            headers = msg.headers or {}
            try:
                batch.events.append(
                    parse(
                        msg.subject,
                        msg.data,
                        headers.get("Nats-Msg-Id"),
                        headers.get(PREVIOUS_HEADER),
                    )
                )
                batch.carriers.append(msg)
            except InvalidMessage as e:
                await self._reject(msg, str(e))
                # Never applied, and settled all the same: what follows it does not wait.
                named = link(headers.get("Nats-Msg-Id"), headers.get(PREVIOUS_HEADER), msg.subject)
                if named is not None:
                    batch.rejected.append(named)
        batch.seconds = time.perf_counter() - started
        return batch

    async def _give_back(self, batch: _Batch) -> None:
        """Have a batch that was not applied come again a little later; its events are owed
        until then."""
        for event, msg in zip(batch.events, batch.carriers, strict=True):
            self._owe(event, msg)
        for msg in batch.carriers:
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    def _owe(self, event: Received, msg: Msg) -> None:
        self._owed.setdefault(event.source, {})[event.sequence] = _delivery(msg).stream

    def _paid(self, event: Received) -> None:
        owed = self._owed.get(event.source)
        if owed is not None and owed.pop(event.sequence, None) is not None and not owed:
            del self._owed[event.source]

    def _doubt(self, mark: int | None) -> None:
        """Deliveries may have been lost before stream sequence `mark` (None: the server's
        delivered sequence, asked next)."""
        if not self._doubtful or mark is None:
            self._doubt_mark = mark
        elif self._doubt_mark is not None:
            self._doubt_mark = max(self._doubt_mark, mark)
        self._doubtful = True

    async def _settle_doubts(self) -> None:
        """While events are owed or deliveries may have been lost, ask the server (at most every
        `DOUBTS_CHECKED_EVERY_S`) how far the acknowledgements have got: everything at or below
        its acknowledgement floor was settled, by whichever delivery. A doubt ends once the
        floor passes its mark (or nothing is outstanding at all); owed events the floor passed
        (settled elsewhere, say) are owed no more."""
        if not self._doubtful and not self._owed:
            return
        now = time.monotonic()
        if now - self._doubts_checked < DOUBTS_CHECKED_EVERY_S or not self.link.connected:
            return
        self._doubts_checked = now
        try:
            js = await self.link.wait()
            info = await js.consumer_info(self.stream, self.durable)
        except Exception as e:  # asked again at the next batch or wait
            self._no_info(e)
            return
        floor = (info.ack_floor or SequenceInfo(0, 0)).stream_seq
        if self._doubtful:
            if self._doubt_mark is None:
                self._doubt_mark = (info.delivered or SequenceInfo(0, 0)).stream_seq
            if not info.num_ack_pending or floor >= self._doubt_mark:
                self._doubtful = False
                self._doubt_mark = None
        for source, owed in list(self._owed.items()):
            for sequence in [q for q, at in owed.items() if at <= floor]:
                del owed[sequence]
            if not owed:
                del self._owed[source]
        async with self._advanced:
            self._advanced.notify_all()

    async def _apply(self, batch: _Batch) -> None:
        """Apply a checked batch in one transaction, then settle each of its messages."""
        started = time.perf_counter()
        events, carriers = batch.events, batch.carriers
        if events or batch.rejected:
            try:
                outcomes, invalid = await self._worker.run(
                    self.inbox.process, events, batch.rejected
                )
            except PersistenceError as e:
                # Nothing was applied: have the batch come again soon, then back off.
                await self._give_back(batch)
                if isinstance(e, LostCommits):
                    self._stop_for_good(e)  # before anything else is acknowledged
                raise
            # Committed. What arrived early is owed until it comes again; what was settled is
            # owed no more. Then release the readers waiting for these positions, before the acks.
            for event, msg, outcome in zip(events, carriers, outcomes, strict=True):
                if outcome is Outcome.EARLY:
                    self._owe(event, msg)
                elif self._owed:
                    self._paid(event)
            # Counted before anything awaits: a reader released below sees the counts too.
            CONSUMER_APPLIED.labels(self.service, self.name).inc(outcomes.count(Outcome.APPLIED))
            CONSUMER_DUPLICATES.labels(self.service, self.name).inc(
                outcomes.count(Outcome.DUPLICATE)
            )
            self._release()
            async with self._advanced:
                self._advanced.notify_all()
            if self.inbox.defers_sync:
                if not self._unsynced:
                    self._unsynced_since = time.monotonic()
                self._unsynced.extend(
                    (msg, outcome, invalid.get(i))
                    for i, (msg, outcome) in enumerate(zip(carriers, outcomes, strict=True))
                )
                if time.monotonic() - self._unsynced_since >= self.sync_every:
                    await self._sync_and_settle()
            else:
                await self._settle(
                    [
                        (msg, outcome, invalid.get(i))
                        for i, (msg, outcome) in enumerate(zip(carriers, outcomes, strict=True))
                    ]
                )
        for event in events:
            self.last_event_time[event.source] = max(
                self.last_event_time.get(event.source, event.time), event.time
            )
        self.pending = _pending(batch.msgs[-1])
        self.caught_up = self.pending == 0
        self.last_error = None
        self.last_progress = time.monotonic()
        CONSUMER_LAG.labels(self.service, self.name).set(self.pending)
        for source, position in self.positions.items():
            CONSUMER_POSITION.labels(self.service, self.name, source).set(position)
            missing = sum(h.through - h.after for h in self._holes.get(source, ()))
            CONSUMER_HOLES.labels(self.service, self.name, source).set(missing)
        now = datetime.now(UTC)
        for source, at in self.last_event_time.items():
            # How old the newest event seen is, while more are waiting: lag in time.
            behind = (now - at).total_seconds() if self.pending else 0.0
            CONSUMER_LAG_SECONDS.labels(self.service, self.name, source).set(max(0.0, behind))
        CONSUMER_BATCH_SECONDS.labels(self.service, self.name).observe(
            batch.seconds + time.perf_counter() - started
        )

    async def _sync_and_settle(self) -> None:
        """Make the batches applied so far durable, then acknowledge (or hand back) their
        messages. If the sync fails, none is acknowledged and the consumer stops for good
        (`on_sync_failed`)."""
        count = len(self._unsynced)
        if not count or self._sync_failed is not None:
            return
        # Taken off only once settled: a stop that cancels this part-way leaves them for the
        # next call (the consumer's last, as it stops), which settles those still unsettled.
        try:
            await self._worker.run(self.inbox.sync)
        except SyncUnconfirmed:
            raise  # nothing is known lost: the next sync checks the same commits
        except (OSError, PersistenceError) as e:
            self._stop_for_good(e)
            raise
        unsynced = self._unsynced
        await self._settle(list(itertools.islice(unsynced, count)))
        for _ in range(count):
            unsynced.popleft()

    def _stop_for_good(self, e: BaseException) -> None:
        """The store may not have what this process committed (a failed fsync, commits lost):
        nothing more is applied or acknowledged, and the process is asked to stop."""
        self._sync_failed = e
        CONSUMER_FAILURES.labels(self.service, self.name).inc()
        log.critical(
            "consumer %s: the store could not make its commits durable (%s: %s); %d"
            " messages stay unacknowledged, and the process stops so that one started"
            " afresh from the store applies them when they are delivered again",
            self.durable,
            type(e).__name__,
            e,
            len(self._unsynced),
        )
        self._on_sync_failed()

    async def _settle(self, settled: Sequence[tuple[Msg, Outcome, str | None]]) -> None:
        """Acknowledge the messages applied or recognised as duplicates, together; hand back
        those that came early and reject the invalid ones, each on its own (both are rare).
        A message settled already (by a call a stop cancelled part-way) is left as it is."""
        unsettled = [(msg, outcome, reason) for msg, outcome, reason in settled if not msg._ackd]
        await self.acknowledge(
            [
                msg
                for msg, outcome, _ in unsettled
                if outcome in (Outcome.APPLIED, Outcome.DUPLICATE)
            ]
        )
        for msg, outcome, reason in unsettled:
            if outcome is Outcome.INVALID:
                await self._reject(msg, reason or "invalid")
            elif outcome is Outcome.EARLY:
                # Its predecessor is still on its way: back off a little more each time.
                CONSUMER_RESCHEDULED.labels(self.service, self.name).inc()
                attempts = _delivered(msg)
                await msg.nak(delay=min(self.early_delay * attempts, 30.0))

    async def acknowledge(self, msgs: Sequence[Msg]) -> None:
        """Acknowledge messages whose effect is stored (in one write to the connection)."""
        if msgs:
            await acknowledge_all(msgs[0]._client, msgs)

    async def _reject(self, msg: Msg, reason: str) -> None:
        CONSUMER_REJECTED.labels(self.service, self.name).inc()
        meta = msg.metadata
        log.error(
            "consumer %s rejected stream message %s on %s: %s",
            self.durable,
            meta.sequence.stream,
            msg.subject,
            reason,
        )
        await msg.term()


def _stop_this_process() -> None:
    """Ask this process to stop as a signal from outside would: the service shuts down and
    its supervisor starts it again."""
    os.kill(os.getpid(), signal.SIGTERM)

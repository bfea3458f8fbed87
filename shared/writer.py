"""The write path: one writer thread per service saving the commands of many concurrent
requests in one transaction (group commit).

`eventsourcing` is synchronous. Rather than block the event loop, or pay one transaction per
request in the thread pool, async routes hand a command to this writer and await its answer.
The writer takes whatever commands are queued, runs them one after another against aggregates
it keeps cached, and saves all their events with one `app.save(...)`. When that save conflicts
(another process wrote first) or a command failed half-way, it drops the cached aggregates and
runs each command alone from a fresh load, so a conflict costs time, never a lost or doubled
update. A command answered 2xx is committed; a refused command records nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, PersistenceError

from shared.domain import (
    CommandContext,
    DomainError,
    Forbidden,
    NotFound,
    VersionMismatch,
    command_context,
)
from shared.store import Document, IdempotencyRecord, Lookup, ServiceApplication
from shared.telemetry import COMMANDS, EVENTS_STORED, FORBIDDEN, STORE_LATENCY, WRITER_BATCH

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Aggregate)

MAX_ATTEMPTS = 8


class Conflict(DomainError):
    """Concurrent writers kept conflicting; safe to retry (HTTP 409)."""


class IdempotencyKeyReused(DomainError):
    """The same Idempotency-Key was sent with a different request (HTTP 422)."""


class StoreUnavailable(Exception):
    """The event store could not be reached; nothing was recorded (HTTP 503)."""


@dataclass(frozen=True)
class Idempotency:
    key: str  # already scoped to the actor
    fingerprint: str  # hash of method, path and body


@dataclass(frozen=True)
class CommandResult:
    status: int
    body: dict[str, Any]
    replayed: bool = False

    @property
    def version(self) -> int:
        return int(self.body["version"])


@dataclass(frozen=True)
class _Answer:
    """What a command answers: the id it is about (an aggregate's, or one the command chose,
    like a check-in's), the version of the aggregate it changed, and any extra fields."""

    id: UUID
    version: int
    extra: tuple[tuple[str, Any], ...] = ()

    def body(self, position: str | None) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "version": self.version,
            "position": position,
            **dict(self.extra),
        }


@dataclass(frozen=True)
class _Done:
    """A command that ran in a batch, waiting for the batch to be saved."""

    cmd: _Command
    events: list[tuple[UUID, int]]
    answer: _Answer
    lookups: list[Lookup]
    documents: list[Document]


@dataclass
class _Command:
    run: Callable[[UnitOfWork], Aggregate]
    context: CommandContext
    idempotency: Idempotency | None
    status: int
    future: asyncio.Future[CommandResult]
    loop: asyncio.AbstractEventLoop

    def settle(self, result: CommandResult | BaseException) -> None:
        """On the command's event loop: hand the waiting request its answer."""
        if self.future.done():  # the request was cancelled (its client went away)
            return
        if isinstance(result, BaseException):
            self.future.set_exception(result)
        else:
            self.future.set_result(result)


_Result = CommandResult | BaseException


def _settle_all(answers: list[tuple[_Command, _Result]]) -> None:
    for cmd, result in answers:
        cmd.settle(result)


class _Answers:
    """A batch's answers, handed to the event loop together once the batch is done: one
    wake-up of the loop per batch rather than one per command (each a write to the loop's
    self-pipe, and the loop then contending for the GIL with the writer's next command)."""

    def __init__(self) -> None:
        self._by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Command, _Result]]] = {}

    def add(self, cmd: _Command, result: _Result) -> None:
        self._by_loop.setdefault(cmd.loop, []).append((cmd, result))

    def send(self) -> None:
        by_loop, self._by_loop = self._by_loop, {}
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop has no one waiting
                loop.call_soon_threadsafe(_settle_all, answers)


class AggregateCache:
    """A bounded LRU of aggregates at their last saved version. Writer thread only."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[UUID, Aggregate] = OrderedDict()

    def get(self, aggregate_id: UUID) -> Aggregate | None:
        agg = self._items.get(aggregate_id)
        if agg is not None:
            self._items.move_to_end(aggregate_id)
        return agg

    def put(self, agg: Aggregate) -> None:
        if self.size <= 0:
            return
        self._items[agg.id] = agg
        self._items.move_to_end(agg.id)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def evict(self, aggregate_id: UUID) -> None:
        self._items.pop(aggregate_id, None)

    def clear(self) -> None:
        self._items.clear()


class UnitOfWork:
    """What one command sees: aggregates by id, loaded once per batch, and what it changed."""

    def __init__(
        self,
        app: ServiceApplication,
        cache: AggregateCache | None,
        batch: dict[UUID, Aggregate],
        documents: dict[tuple[str, str], Document] | None = None,
    ) -> None:
        self._app = app
        self._cache = cache
        self._batch = batch
        # Documents written by earlier commands of the batch (not saved yet), and by this one.
        self._batch_documents = documents if documents is not None else {}
        self.documents: dict[tuple[str, str], Document] = {}
        # For each aggregate this command touched: its pending events when first touched.
        self.pending_before: dict[UUID, int] = {}
        self.new: list[Aggregate] = []
        self.lookups: list[Lookup] = []
        self.answer_id: UUID | None = None
        self.answer_extra: dict[str, Any] = {}

    def get(self, aggregate_id: UUID, cls: type[A], what: str | None = None) -> A:
        agg = self.find(aggregate_id, cls)
        if agg is None:
            raise NotFound(f"No {what or cls.__name__.lower()} with id {aggregate_id}")
        return agg

    def find(self, aggregate_id: UUID, cls: type[A]) -> A | None:
        """The aggregate, or None when there is none of that class with this id."""
        agg = next((a for a in self.new if a.id == aggregate_id), None) or self._batch.get(
            aggregate_id
        )
        if agg is None and self._cache is not None:
            agg = self._cache.get(aggregate_id)
        if agg is None:
            try:
                agg = self._app.repository.get(aggregate_id)
            except AggregateNotFoundError:
                agg = None
        if not isinstance(agg, cls):
            return None
        if any(a is agg for a in self.new):
            return agg
        self._batch[aggregate_id] = agg
        if aggregate_id not in self.pending_before:
            self.pending_before[aggregate_id] = len(agg.pending_events)
        return agg

    def add(self, agg: A) -> A:
        self.new.append(agg)
        return agg

    def index(self, kind: str, key: UUID | str, aggregate_id: UUID) -> None:
        """Record, with this command's events, that `key` of `kind` lives in an aggregate."""
        self.lookups.append(Lookup(kind, str(key), str(aggregate_id)))

    def document(self, kind: str, key: UUID | str) -> dict[str, Any] | None:
        """The body of a document, as this batch left it so far."""
        ident = (kind, str(key))
        found = self.documents.get(ident) or self._batch_documents.get(ident)
        if found is not None:
            return found.body
        return self._app.find_document(kind, str(key))

    def put_document(self, document: Document) -> None:
        """Write `document` with this command's events."""
        self.documents[(document.kind, document.key)] = document

    def respond(self, answer_id: UUID, **extra: Any) -> None:
        """Answer with this id (and extra fields) rather than the aggregate's own id."""
        self.answer_id = answer_id
        self.answer_extra = extra

    def answer(self, primary: Aggregate) -> _Answer:
        return _Answer(
            self.answer_id or primary.id, primary.version, tuple(self.answer_extra.items())
        )

    @staticmethod
    def expect_version(agg: Aggregate, expected: int | None) -> None:
        if expected is not None and expected != agg.version:
            raise VersionMismatch(expected, agg.version)

    @staticmethod
    def expect_version_absent(expected: int | None) -> None:
        """For a command that creates its aggregate: only version 0 (none yet) matches."""
        if expected is not None and expected != 0:
            raise VersionMismatch(expected, 0)

    def changed_anything(self) -> bool:
        return bool(self.new) or any(
            len(self._batch[i].pending_events) > n for i, n in self.pending_before.items()
        )

    def events(self) -> list[tuple[UUID, int]]:
        """(aggregate id, version) of every event this command triggered."""
        keys: list[tuple[UUID, int]] = []
        for agg in self.new:
            keys.extend((agg.id, v) for v in range(1, agg.version + 1))
        for agg_id, pending in self.pending_before.items():
            agg = self._batch[agg_id]
            first = agg.version - len(agg.pending_events) + pending + 1
            keys.extend((agg_id, v) for v in range(first, agg.version + 1))
        return keys


class CommandWriter:
    """Runs commands on a dedicated thread, saving each batch in one transaction."""

    def __init__(
        self,
        app: ServiceApplication,
        service: str,
        *,
        max_batch: int = 256,
        cache_size: int = 10_000,
    ) -> None:
        self.app = app
        self.service = service
        self.max_batch = max_batch
        self.cache = AggregateCache(cache_size)
        self._queue: queue.SimpleQueue[_Command | None] = queue.SimpleQueue()
        self._answers = _Answers()  # writer thread only
        # The metrics' children for this service, looked up once rather than per command.
        self._batch_size = WRITER_BATCH.labels(service)
        self._events_stored = EVENTS_STORED.labels(service)
        self._store_latency = STORE_LATENCY.labels(service)
        self._commands: dict[str, Any] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name=f"{self.service}-writer", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    async def execute(
        self,
        run: Callable[[UnitOfWork], Aggregate],
        context: CommandContext,
        *,
        idempotency: Idempotency | None = None,
        status: int = 200,
    ) -> CommandResult:
        """Run `run` (which returns the aggregate the command is about) and commit it."""
        if self._thread is None:
            raise RuntimeError("The writer is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CommandResult] = loop.create_future()
        self._queue.put(_Command(run, context, idempotency, status, future, loop))
        return await future

    # --- the writer thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            try:
                self._run_batch(batch)
            except BaseException as e:  # never leave a request waiting forever
                log.exception("writer batch failed")
                for cmd in batch:
                    self._answers.add(cmd, e)  # ignored by those answered already
            self._answers.send()
            if stop:
                return

    def _stored_answer(self, cmd: _Command) -> CommandResult | None:
        if cmd.idempotency is None:
            return None
        answer = self.app.find_answer(cmd.idempotency.key)
        if answer is None:
            return None
        if answer.fingerprint != cmd.idempotency.fingerprint:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used for a different request"
            )
        return CommandResult(answer.status, answer.body, replayed=True)

    def _run_batch(self, commands: list[_Command]) -> None:
        self._batch_size.observe(len(commands))
        batch: dict[UUID, Aggregate] = {}
        documents: dict[tuple[str, str], Document] = {}
        done: list[_Done] = []
        # Commands repeating a key already in this batch wait for the first one's answer.
        followers: dict[str, list[_Command]] = {}
        poisoned = False
        for cmd in commands:
            key = cmd.idempotency.key if cmd.idempotency else None
            if key is not None and key in followers:
                followers[key].append(cmd)
                continue
            try:
                stored = self._stored_answer(cmd)
            except DomainError as e:
                self._finish(cmd, e)
                continue
            except PersistenceError as e:
                self._finish(cmd, StoreUnavailable(str(e)))
                continue
            if stored is not None:
                self._finish(cmd, stored)
                continue
            if key is not None:
                followers[key] = []
            uow = UnitOfWork(self.app, self.cache, batch, documents)
            failure: BaseException | None = None
            try:
                with command_context(cmd.context):
                    primary = cmd.run(uow)
            except DomainError as e:
                failure = e
            except PersistenceError as e:
                failure = StoreUnavailable(str(e))
            except Exception as e:
                log.exception("command failed")
                failure = e
            if failure is not None:
                poisoned = poisoned or uow.changed_anything()
                self._finish(cmd, failure)
                if key is not None:
                    # Refused commands store no key: a later copy in this batch runs on its own.
                    followers.pop(key, None)
                continue
            # Taken now: saving clears pending events, and later commands in the batch may
            # change the same aggregate again.
            events = uow.events()
            for agg in uow.new:
                batch[agg.id] = agg
            documents.update(uow.documents)
            done.append(
                _Done(cmd, events, uow.answer(primary), uow.lookups, list(uow.documents.values()))
            )

        if poisoned:
            # A refused command left events behind on a shared aggregate: start over, alone.
            self._evict(batch)
            results = {id(d.cmd): self._run_alone(d.cmd) for d in done}
        else:
            results = self._save_batch(batch, done)

        for d in done:
            cmd = d.cmd
            result = results[id(cmd)]
            self._finish(cmd, result)
            if cmd.idempotency is not None:
                for follower in followers.get(cmd.idempotency.key, []):
                    self._finish(follower, _as_replay(result, cmd, follower))

    def _save_batch(
        self,
        batch: dict[UUID, Aggregate],
        done: list[_Done],
    ) -> dict[int, CommandResult | BaseException]:
        records = [self._record(d.cmd, d.events, d.answer) for d in done if d.cmd.idempotency]
        lookups = [x for d in done for x in d.lookups]
        # The last state of each document the batch wrote.
        documents = list({(x.kind, x.key): x for d in done for x in d.documents}.values())
        aggregates = [a for a in batch.values() if a.pending_events]
        try:
            recordings = self._save(aggregates, records, lookups, documents)
        except IntegrityError:
            self._evict(batch)
            return {id(d.cmd): self._run_alone(d.cmd) for d in done}
        except PersistenceError as e:
            self._evict(batch)
            return {id(d.cmd): StoreUnavailable(str(e)) for d in done}
        except Exception as e:
            self._evict(batch)
            return {id(d.cmd): e for d in done}
        for agg in batch.values():
            self.cache.put(agg)
        ids = _positions(recordings)
        return {id(d.cmd): self._result(d.cmd, d.events, d.answer, ids) for d in done}

    def _run_alone(self, cmd: _Command) -> CommandResult | BaseException:
        """Run one command from freshly loaded aggregates, retrying on conflicts."""
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                # Another writer keeps winning: step aside briefly (jittered, a few ms at most)
                # rather than collide again at once.
                time.sleep(random.uniform(0, 0.0005 * 2**attempt))
            batch: dict[UUID, Aggregate] = {}
            try:
                stored = self._stored_answer(cmd)
                if stored is not None:
                    return stored
                uow = UnitOfWork(self.app, None, batch)
                with command_context(cmd.context):
                    primary = cmd.run(uow)
                events = uow.events()
                answer = uow.answer(primary)
                for agg in uow.new:
                    batch[agg.id] = agg
                aggregates = [a for a in batch.values() if a.pending_events]
                records = [self._record(cmd, events, answer)] if cmd.idempotency else []
                recordings = self._save(
                    aggregates, records, uow.lookups, list(uow.documents.values())
                )
            except IntegrityError:
                continue
            except DomainError as e:
                return e
            except PersistenceError as e:
                return StoreUnavailable(str(e))
            except Exception as e:
                log.exception("command failed")
                return e
            for agg in batch.values():
                self.cache.put(agg)
            return self._result(cmd, events, answer, _positions(recordings))
        return Conflict("The resource kept changing while this command ran; retry it")

    def _save(
        self,
        aggregates: list[Aggregate],
        records: list[IdempotencyRecord],
        lookups: list[Lookup],
        documents: list[Document],
    ) -> list[Any]:
        """One transaction: the events, their lookups and documents, and the answers of keyed
        commands. Commands that changed nothing still get their answer stored, so a retry never
        runs them again (a document is only ever written with an event)."""
        started = time.perf_counter()
        if aggregates:
            recordings = list(
                self.app.save(
                    *aggregates, idempotency=records, lookups=lookups, documents=documents
                )
            )
            self._events_stored.inc(len(recordings))
        else:
            self.app.save_answers(records)
            recordings = []
        self._store_latency.observe(time.perf_counter() - started)
        return recordings

    def _record(
        self, cmd: _Command, events: list[tuple[UUID, int]], primary: _Answer
    ) -> IdempotencyRecord:
        assert cmd.idempotency is not None
        return IdempotencyRecord(
            key=cmd.idempotency.key,
            fingerprint=cmd.idempotency.fingerprint,
            status=cmd.status,
            body=primary.body(None),
            events=events,
            position_prefix=f"{self.service}:",
        )

    def _result(
        self,
        cmd: _Command,
        events: list[tuple[UUID, int]],
        primary: _Answer,
        ids: dict[tuple[UUID, int], int],
    ) -> CommandResult:
        positions = [ids[k] for k in events if k in ids]
        position = f"{self.service}:{max(positions)}" if positions else None
        return CommandResult(cmd.status, primary.body(position))

    def _finish(self, cmd: _Command, result: CommandResult | BaseException) -> None:
        if isinstance(result, CommandResult):
            outcome = "replayed" if result.replayed else "ok"
        else:
            outcome = type(result).__name__
        if isinstance(result, Forbidden):
            FORBIDDEN.labels(self.service, result.permission).inc()
            with command_context(cmd.context):  # stamps the actor on the record
                log.warning("command refused: missing permission %s", result.permission)
        counter = self._commands.get(outcome)
        if counter is None:
            counter = self._commands[outcome] = COMMANDS.labels(self.service, outcome)
        counter.inc()
        self._answers.add(cmd, result)

    def _evict(self, batch: dict[UUID, Aggregate]) -> None:
        for agg_id in batch:
            self.cache.evict(agg_id)


def _positions(recordings: list[Any]) -> dict[tuple[UUID, int], int]:
    """Notification id of each saved event, by (aggregate id, version)."""
    return {
        (UUID(str(r.notification.originator_id)), r.notification.originator_version): (
            r.notification.id
        )
        for r in recordings
    }


def _as_replay(
    result: CommandResult | BaseException, first: _Command, cmd: _Command
) -> CommandResult | BaseException:
    """The answer for a command that repeated the key of an earlier one in the same batch."""
    assert first.idempotency is not None and cmd.idempotency is not None
    if first.idempotency.fingerprint != cmd.idempotency.fingerprint:
        return IdempotencyKeyReused("This Idempotency-Key was already used for a different request")
    if isinstance(result, CommandResult):
        return CommandResult(result.status, result.body, replayed=True)
    return result

"""The relay: the service's own event store is its outbox.

It tails the notification log, publishes each stored event to JetStream as a CloudEvents
envelope (after commit, in log order, pipelined in batches, each message naming the event
before it in the log: `Okr-Previous-Sequence`, which tells consumers what they still lack
when a failed publish goes out again after later ones), and records in the same store how
far it got (every `RECORD_AFTER_EVENTS` events through a backlog, and at most once a second
under a trickle). Each save also hands it the events it committed (`offer`): when they are
the next ones of the log, it publishes them without reading them back from the store. After a
crash it starts again from the recorded position: anything published but not yet recorded goes
out again with the same `Nats-Msg-Id`, which JetStream drops within its duplicate window and
subscribers drop by (source, sequence) after it. An operator may move the recorded position
back (`rewind`, after NATS lost messages): the relay records only over what it recorded
itself, so it notices, and starts again from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from eventsourcing.persistence import Notification
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import APIError, NoStreamResponseError

from shared import contract
from shared.envelopes import Envelopes
from shared.nats import JetStreamPublisher, NatsLink
from shared.store import RELAY_TRACKING_NAME, Logged, ServiceApplication, SQLiteStoreRecorder
from shared.tasks import BlockingWorker, stop_task
from shared.telemetry import (
    RELAY_BACKLOG,
    RELAY_DUPLICATES,
    RELAY_FAILURES,
    RELAY_POSITION,
    RELAY_PUBLISH_LATENCY,
    RELAY_PUBLISHED,
)

log = logging.getLogger(__name__)

# Notifications kept from saves' offers at most; past that the relay reads the store.
OFFERED_MAX = 10_000
# Through a backlog, the position is recorded after this many events (or a page, if larger):
# a record is a commit, which took a tenth of the relay's time when made after every page of
# 2,000. A crash republishes at most this many, which JetStream drops as duplicates.
RECORD_AFTER_EVENTS = 10_000


@dataclass
class _Page:
    """Notifications published together, and JetStream's acknowledgements to come (each
    telling whether the stream already held the message)."""

    notifications: Sequence[Notification | Logged]
    futures: list[asyncio.Future[bool]]
    started: float


def _rejection(error: dict[str, Any]) -> APIError:
    """JetStream's error answer to a publish, as nats-py's exception for it. (`from_error`
    raises it rather than returning it: nats-py's own `publish_async` lets that escape its
    callback, and the publish's future waits for its timeout instead of failing at once.)"""
    try:
        APIError.from_error(error)
    except APIError as e:
        return e
    return APIError(description=str(error))


class _Acks:
    """Publishes whose JetStream acknowledgements come back to one subscription of the relay's
    own, each to the future of its message.

    This is what nats-py's `publish_async` does per message, less the semaphore it waits on, the
    callback it adds to each future and the `PubAck` it builds from each answer: 5-6% of the
    checkins process's time under load, in the process that serves the commands. The relay
    bounds what is in flight itself (two pages), and hands each page to the connection at once
    (`JetStreamPublisher`)."""

    def __init__(self, nc: Client, stream: str) -> None:
        self.nc = nc
        # `new_inbox` keeps to the connection's inbox prefix, which NATS permissions allow.
        self.prefix = nc.new_inbox() + "."
        self.publisher = JetStreamPublisher(nc, stream, self.prefix)
        self.futures: dict[str, asyncio.Future[bool]] = {}
        self.sent = 0
        self.subscription: Subscription | None = None

    async def start(self) -> None:
        self.subscription = await self.nc.subscribe(self.prefix + "*", cb=self._answer)

    async def close(self) -> None:
        if self.subscription is not None:
            with contextlib.suppress(Exception):
                await self.subscription.unsubscribe()
        for fut in self.futures.values():
            fut.cancel()
        self.futures.clear()

    async def publish(
        self, messages: Sequence[tuple[str, bytes, str, int]]
    ) -> list[asyncio.Future[bool]]:
        """Publish (subject, body, msg id, previous sequence)s, in order; a future for each
        acknowledgement. A message the connection cannot take raises before any is sent."""
        command = self.publisher.command
        first = self.sent + 1
        commands = [
            command(subject, token, msg_id, body, previous)
            for token, (subject, body, msg_id, previous) in enumerate(messages, first)
        ]
        new_future = asyncio.get_running_loop().create_future
        futures: list[asyncio.Future[bool]] = [new_future() for _ in commands]
        self.futures.update(zip(map(str, range(first, first + len(futures))), futures, strict=True))
        self.sent += len(futures)
        try:
            await self.publisher.send(commands)
        except BaseException:
            self.forget(futures)
            raise
        return futures

    def forget(self, futures: Sequence[asyncio.Future[bool]]) -> None:
        """Stop waiting for these (a page given up on): cancel them, drop their tokens."""
        for fut in futures:
            fut.cancel()
        given_up = set(map(id, futures))
        self.futures = {t: f for t, f in self.futures.items() if id(f) not in given_up}

    async def _answer(self, msg: Msg) -> None:
        fut = self.futures.pop(msg.subject[len(self.prefix) :], None)
        if fut is None or fut.done():
            return  # given up on, or not ours
        if msg.headers and msg.headers.get("Status") == "503":
            fut.set_exception(NoStreamResponseError())  # no stream takes the subject
            return
        try:
            answer = orjson.loads(msg.data)
            if "error" in answer:
                fut.set_exception(_rejection(answer["error"]))
            elif "seq" in answer and "stream" in answer:
                fut.set_result(bool(answer.get("duplicate", False)))
            else:
                fut.set_exception(APIError(description=f"not an acknowledgement: {answer!r}"))
        except Exception as e:
            fut.set_exception(e)


class _Rewound(Exception):
    """The recorded position is no longer the one the relay recorded: an operator moved it
    back under the running relay."""


class Relay:
    def __init__(
        self,
        app: ServiceApplication,
        service: str,
        link: NatsLink,
        *,
        stream: str = "OKR",
        batch_size: int = 2000,
        poll_interval: float = 0.5,
        publish_timeout: float = 5.0,
        record_every: float = 1.0,
    ) -> None:
        self.app = app
        self.service = service
        self.source = f"okr/{service}"
        self.link = link
        self.stream = stream
        self.batch_size = batch_size
        self.record_after = max(batch_size, RECORD_AFTER_EVENTS)
        self.poll_interval = poll_interval
        self.publish_timeout = publish_timeout
        self.record_every = record_every
        self.position = 0
        # What the store says was published, and when that was last written.
        self._recorded = 0
        self._recorded_at = 0.0
        self._backlog_checked_at = 0.0
        self.last_error: str | None = None
        self.last_progress = time.monotonic()
        self.caught_up = False
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._worker = BlockingWorker(f"{service}-relay")
        self._envelopes = Envelopes(app.mapper, service)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Notifications handed over by saves as they committed, in the order they arrived,
        # and whether the store must be read all the same (at the start, after a gap in the
        # offers, on a wake-up or when the poll interval passed: a save that was not offered).
        self._offered: deque[Notification] = deque()
        self._must_read = True

    # --- control ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self.run(), name=f"{self.service}-relay")

    async def stop(self) -> None:
        self._stopping = True
        await stop_task(self._task)
        self._task = None
        if self.position > self._recorded:
            # Best effort: what is not recorded is published again (and dropped) next time.
            with contextlib.suppress(Exception):
                await self._record()
        await self._worker.close()

    def wake(self) -> None:
        """Thread-safe: new events were committed; read the store for them."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._read_soon)

    def _read_soon(self) -> None:
        self._must_read = True
        self._wakeup.set()

    def offer(self, notifications: Sequence[Notification]) -> None:
        """Thread-safe: a save committed these notifications (ascending ids)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._take, notifications)

    def _take(self, notifications: Sequence[Notification]) -> None:
        if len(self._offered) + len(notifications) > OFFERED_MAX:
            self._offered.clear()  # far behind: reading the store is the faster way then
            self._must_read = True
        else:
            self._offered.extend(notifications)
        self._wakeup.set()

    def _next_offered(self, after: int) -> list[Notification]:
        """The offered notifications right after `after`, if they are the next ones of the
        log: the ids go on one by one from `after + 1`, so none can be missing. Otherwise
        none (the store is read), and what is offered out of order is dropped."""
        offered = self._offered
        while offered and offered[0].id <= after:
            offered.popleft()
        taken: list[Notification] = []
        expected = after + 1
        while offered and len(taken) < self.batch_size and offered[0].id == expected:
            taken.append(offered.popleft())
            expected += 1
        if not taken and offered:
            offered.clear()  # a gap (another save's offer is still on its way): read the store
            self._must_read = True
        return taken

    def stuck_for(self) -> float:
        """Seconds the relay has had a backlog without making progress (0 when caught up)."""
        if self.caught_up:
            return 0.0
        return time.monotonic() - self.last_progress

    # --- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        delay = 0.1
        position_at_failure = -1
        while not self._stopping:
            try:
                await self._pump()
            except asyncio.CancelledError:
                raise
            except _Rewound:
                # Not a failure: what is in flight is dropped, and the next round reads the
                # rewound position and publishes from there.
                log.warning(
                    "relay of %s: the recorded position is no longer its own (moved back by"
                    " relay-rewind); publishing from the recorded one",
                    self.service,
                )
                continue
            except Exception as e:
                if self._stopping:
                    return
                RELAY_FAILURES.labels(self.service).inc()
                self.last_error = f"{type(e).__name__}: {e}"
                self.caught_up = False
                # Back off while failures repeat; start short again once progress was made.
                if self.position != position_at_failure:
                    delay = 0.1
                position_at_failure = self.position
                log.warning(
                    "relay of %s: %s: %s; retrying in %.1fs",
                    self.service,
                    type(e).__name__,
                    e,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _pump(self) -> None:
        await self.link.wait()
        assert self.link.nc is not None
        acks = _Acks(self.link.nc, self.stream)
        await acks.start()
        try:
            await self._pump_with(acks)
        finally:
            await acks.close()

    async def _pump_with(self, acks: _Acks) -> None:
        recorder = self.app.recorder
        recorded = (
            await self._worker.run(recorder.max_tracking_id, RELAY_TRACKING_NAME)  # type: ignore[attr-defined]
        ) or 0
        # After a failure, go on from what JetStream acknowledged, recorded or not; from the
        # recorded position at the start, and after a rewind (it is below what was recorded).
        if recorded >= self._recorded:
            self.position = max(self.position, recorded)
        else:
            self.position = recorded
        self._recorded, self._recorded_at = recorded, time.monotonic()
        RELAY_POSITION.labels(self.service).set(self.position)
        # Two pages in flight: the next one is read and published while JetStream acknowledges
        # the previous one, so neither the store nor NATS waits on the other.
        read_to = self.position
        in_flight: _Page | None = None
        self._must_read = True
        while not self._stopping:
            self._wakeup.clear()
            notifications: Sequence[Notification | Logged] = self._next_offered(read_to)
            if not notifications and self._must_read:
                notifications = await self._worker.run(
                    recorder.read_log,  # type: ignore[attr-defined]
                    read_to,
                    self.batch_size,
                )
                # A short page is all the store had: what comes next will be offered.
                self._must_read = len(notifications) >= self.batch_size
            page: _Page | None = None
            if notifications:
                if self.caught_up and in_flight is None:
                    # Idle time is not lack of progress: start the clock at the new backlog.
                    self.last_progress = time.monotonic()
                self.caught_up = False
                page = await self._publish(acks, notifications, read_to)
                read_to = notifications[-1].id
            if in_flight is not None:
                try:
                    await self._settle(acks, in_flight)
                except BaseException:
                    if page is not None:
                        acks.forget(page.futures)
                    raise
            in_flight = page
            if in_flight is not None:
                continue
            # Nothing in flight and nothing new: caught up.
            self.caught_up = True
            self.last_error = None
            RELAY_BACKLOG.labels(self.service).set(0)
            wait = self.poll_interval
            if self.position > self._recorded:
                due = self._recorded_at + self.record_every - time.monotonic()
                if due <= 0:
                    await self._record()
                    continue
                wait = min(wait, due)
            try:
                await asyncio.wait_for(self._wakeup.wait(), wait)
            except TimeoutError:
                if wait < self.poll_interval:
                    continue  # the position is due to be recorded: not yet a poll
                self._must_read = True  # a poll: anything saved and not offered is read now
                await self._check_not_rewound()

    async def _publish(
        self, acks: _Acks, notifications: Sequence[Notification | Logged], previous: int
    ) -> _Page:
        """Publish a page without waiting for the acknowledgements. `previous`: the sequence
        of the event before the page's first (nothing lies between them in the log), which
        each message names for the one before it: a subscriber then knows what it still
        lacks when a failed publish was sent again after later ones."""
        started = time.perf_counter()
        message = self._envelopes.message
        source = self.source
        before = [previous, *(n.id for n in notifications[:-1])]
        futures = await acks.publish(
            [
                (*message(n), contract.msg_id(source, n.id), p)
                for n, p in zip(notifications, before, strict=True)
            ]
        )
        return _Page(notifications, futures, started)

    async def _settle(self, acks: _Acks, page: _Page) -> None:
        """Wait for a page's acknowledgements and move the position over the longest
        acknowledged prefix: later messages of a failed page are republished (and
        deduplicated) in the next round."""
        acked = 0
        error: BaseException | None = None
        for fut in page.futures:
            try:
                # Most are acknowledged by now; `wait_for` costs more than the rest per message.
                duplicate = (
                    fut.result()
                    if fut.done()
                    else await asyncio.wait_for(fut, self.publish_timeout)
                )
            except Exception as e:
                error = e
                break
            if duplicate:
                RELAY_DUPLICATES.labels(self.service).inc()
            acked += 1
        if acked < len(page.futures):
            acks.forget(page.futures[acked:])
        if acked:
            last = page.notifications[acked - 1].id
            self.position = last
            # Recording is a commit (an fsync on SQLite) competing with the writer's: under a
            # trickle of commands, record at most every `record_every` seconds; through a
            # backlog, every `record_after` events. A crash republishes at most that much,
            # which JetStream and the consumers drop as duplicates.
            if (
                last - self._recorded >= self.record_after
                or time.monotonic() - self._recorded_at >= self.record_every
            ):
                await self._record()
            self.last_progress = time.monotonic()
            RELAY_PUBLISHED.labels(self.service).inc(acked)
            RELAY_POSITION.labels(self.service).set(last)
            RELAY_PUBLISH_LATENCY.labels(self.service).observe(time.perf_counter() - page.started)
        if error is not None:
            raise error
        self.last_error = None
        now = time.monotonic()
        if len(page.notifications) < self.batch_size and now - self._backlog_checked_at >= 1.0:
            self._backlog_checked_at = now
            max_id = await self._worker.run(self.app.recorder.max_notification_id)
            RELAY_BACKLOG.labels(self.service).set(max(0, (max_id or 0) - self.position))

    async def _check_not_rewound(self) -> None:
        """While idle, at each poll: an operator's rewind is taken at once, rather than at
        the next record."""
        recorded = await self._worker.run(
            self.app.recorder.max_tracking_id,  # type: ignore[attr-defined]
            RELAY_TRACKING_NAME,
        )
        if (recorded or 0) < self._recorded:
            raise _Rewound

    async def _record(self) -> None:
        """Record the position, unless the one recorded is no longer the relay's own: an
        operator moved it back (`rewind`), and the relay starts again from there."""
        position = self.position
        recorder: SQLiteStoreRecorder = self.app.recorder  # type: ignore[assignment]
        recorded = await self._worker.run(
            recorder.advance_tracking, RELAY_TRACKING_NAME, self._recorded, position
        )
        if not recorded:
            raise _Rewound
        self._recorded, self._recorded_at = position, time.monotonic()


def rewind(app: ServiceApplication, position: int) -> int:
    """Move the relay's recorded position back to `position` (0: the start of the log), so
    that the relay publishes everything after it again: after NATS lost messages it had
    acknowledged. A running relay notices at its next poll when idle, or when it next
    records its position (it records only over what it recorded itself), and starts again
    from there; a stopped one starts from there. Returns the position it was at; raises
    `RewindRefused` for a move forward, which would skip events."""
    recorder: SQLiteStoreRecorder = app.recorder  # type: ignore[assignment]
    return recorder.rewind_tracking(RELAY_TRACKING_NAME, position)

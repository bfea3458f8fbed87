"""The relay against a real nats-server and both stores: everything stored is published once
in effect, in order, across relay crashes and NATS outages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import OperationalError

from services.goals.application import GoalsApplication
from services.goals.domain import Cycle
from services.goals.main import GoalsSettings
from shared import contract
from shared.domain import CommandContext, command_context
from shared.envelopes import Envelopes
from shared.nats import NatsLink
from shared.relay import RECORD_AFTER_EVENTS, Relay
from shared.serve import command
from shared.store import RELAY_TRACKING_NAME, store_env
from shared.telemetry import RELAY_DUPLICATES
from tests.support import SECRET, bodies, declare_stream, free_port, read_stream

CTX = CommandContext(
    actor="loader", correlation_id="c", causation_id="c", roles=frozenset({"admin"})
)


def store_events(settings: GoalsSettings, count: int) -> GoalsApplication:
    app = GoalsApplication(store_env(settings))
    with command_context(CTX):
        cycles = [
            Cycle.schedule(f"C{i}", date(2027, 1, 1), date(2027, 3, 31)) for i in range(count)
        ]
    for i in range(0, count, 1000):
        app.save(*cycles[i : i + 1000])
    return app


def assert_exactly_once_in_order(messages, app: GoalsApplication, count: int) -> None:
    envelopes = bodies(messages)
    sequences = [e["sequence"] for e in envelopes]
    stored = [n.id for n in app.recorder.select_notifications(None, count + 10)]
    assert len(stored) == count
    # Exactly the stored events, each once, in the order of the service's log.
    assert sequences == stored
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [f"okr/goals:{s}" for s in stored]
    # Each names the event before it in the log (0 before the first), whatever the gaps.
    assert [m.headers[contract.PREVIOUS_HEADER] for m in messages] == [
        str(s) for s in [0, *stored[:-1]]
    ]


async def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_relay(app: GoalsApplication, url: str, **options: Any) -> AsyncIterator[Relay]:
    """A relay of the goals store (pages of 500) on a link of its own, started; stopped and
    its link closed after the block."""
    link = NatsLink(url, "test")
    await link.start()
    relay = Relay(app, "goals", link, **({"batch_size": 500, "poll_interval": 0.05} | options))
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()
        await link.close()


async def relay_until(app: GoalsApplication, url: str, position: int) -> None:
    """Run a relay of the goals store until it has published up to `position`, then stop
    it."""
    async with running_relay(app, url) as relay:
        await wait_for(lambda: _async(relay.position == position))


async def stream_count(url: str) -> int:
    import nats

    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info("OKR")).state.messages
    finally:
        await nc.close()


def test_the_relays_read_of_the_log_is_the_librarys_notifications(goals_settings) -> None:
    """`read_log` gives what `select_notifications` gives after a position, the originator's
    id as the text the store keeps, and the same message is made of either."""
    app = store_events(goals_settings, 1200)
    try:
        envelopes = Envelopes(app.mapper, "goals")
        for after, limit in ((0, 1200), (0, 500), (499, 2), (1100, 500), (1200, 10)):
            logged = app.recorder.read_log(after, limit)
            stored = app.recorder.select_notifications(after, limit, inclusive_of_start=False)
            assert len(logged) == len(stored) == max(0, min(limit, 1200 - after))
            for row, n in zip(logged, stored, strict=True):
                assert isinstance(row.originator_id, str)
                assert (row.id, UUID(row.originator_id), row.originator_version) == (
                    n.id,
                    n.originator_id,
                    n.originator_version,
                )
                assert (row.topic, row.state) == (n.topic, n.state)
                assert envelopes.message(row) == envelopes.message(n)
    finally:
        app.close()


async def test_every_stored_event_is_published_once_with_its_envelope(goals_settings, nats_server):
    app = store_events(goals_settings, 1200)
    await relay_until(app, nats_server.url, 1200)
    messages = await read_stream(nats_server.url, 1200)
    assert_exactly_once_in_order(messages, app, 1200)
    first = bodies(messages)[0]
    assert first["type"] == "okr.goals.cycle.scheduled.v1"
    assert first["data"] == {"name": "C0", "starts_on": "2027-01-01", "ends_on": "2027-03-31"}
    assert first["actor"] == "loader"
    assert app.recorder.max_tracking_id(RELAY_TRACKING_NAME) == app.recorder.max_notification_id()


async def _async(value):
    return value


async def test_crash_between_publish_and_record_republishes_without_duplicates(
    goals_settings, nats_server
):
    app = store_events(goals_settings, 700)
    original = app.recorder.advance_tracking

    def crash(*args):
        raise RuntimeError("simulated crash after publishing, before recording")

    # A relay publishes everything and records nothing, then goes away (a crash).
    app.recorder.advance_tracking = crash
    async with running_relay(app, nats_server.url) as relay:
        await wait_for(lambda: _async(relay.position == 700))
    assert (app.recorder.max_tracking_id(RELAY_TRACKING_NAME) or 0) == 0
    app.recorder.advance_tracking = original
    before = RELAY_DUPLICATES.labels("goals")._value.get()
    async with running_relay(app, nats_server.url):
        await wait_for(lambda: _eq_tracking(app, 700))
    # The next relay starts from the recorded position: all 700 went out again, and
    # JetStream recognised every repeat by its Nats-Msg-Id.
    assert RELAY_DUPLICATES.labels("goals")._value.get() - before == 700
    assert_exactly_once_in_order(await read_stream(nats_server.url, 700), app, 700)


async def test_through_a_backlog_the_position_is_recorded_every_ten_thousand_events(
    goals_settings, nats_server
):
    count = RECORD_AFTER_EVENTS + 2000
    app = store_events(goals_settings, count)
    original = app.recorder.advance_tracking
    recorded: list[int] = []

    def record(name, expected, position):
        recorded.append(position)
        return original(name, expected, position)

    app.recorder.advance_tracking = record
    async with running_relay(app, nats_server.url, record_every=60) as relay:
        await wait_for(lambda: _async(relay.position == count))
        # Pages of 500: one record, at the first page end past 10,000, and none at the rest
        # (the last, 2,000 events on, waits for a second's trickle or the stop).
        assert recorded == [RECORD_AFTER_EVENTS]
    assert recorded == [RECORD_AFTER_EVENTS, count]
    assert app.recorder.max_tracking_id(RELAY_TRACKING_NAME) == count


async def test_relay_killed_mid_batch_resumes_with_nothing_lost_or_doubled(
    goals_settings, nats_server, tmp_path
):
    count = 6000
    app = store_events(goals_settings, count)
    env = dict(os.environ)
    env.update(
        OKR_JWT_SECRET=SECRET,
        OKR_NATS_URL=nats_server.url,
        OKR_DATA_DIR=str(goals_settings.data_dir),
        OKR_GOALS_PORT=str(free_port()),
        OKR_GOALS_DATABASE_SCHEMA=goals_settings.database_schema,
        OKR_RELAY_BATCH_SIZE="1000",
    )
    if goals_settings.database_url is not None:
        env["OKR_DATABASE_URL"] = goals_settings.database_url.get_secret_value()
    cmd = [sys.executable, "-m", "services.goals"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill -9 once part of the backlog is on the stream but not all of it.
        await wait_for(lambda: _gt(stream_count(nats_server.url), 1500), timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        recorded = app.recorder.max_tracking_id(RELAY_TRACKING_NAME) or 0
        on_stream = await stream_count(nats_server.url)
        assert recorded < count, "the relay finished before it could be killed"
        assert on_stream >= recorded
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await wait_for(lambda: _eq_tracking(app, count), timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert_exactly_once_in_order(await read_stream(nats_server.url, count), app, count)


async def _gt(coro, n: int) -> bool:
    return (await coro) > n


async def _eq_tracking(app: GoalsApplication, n: int) -> bool:
    return (app.recorder.max_tracking_id(RELAY_TRACKING_NAME) or 0) >= n


async def test_nats_outage_while_commands_keep_arriving(goals, nats_server):
    client = goals.client
    r = await client.post(
        "/v1/cycles", json={"name": "Q", "starts_on": "2027-01-01", "ends_on": "2027-03-31"}
    )
    assert r.status_code == 201
    await wait_for(lambda: _async(goals.runtime.relay.position >= 1))

    nats_server.stop()
    await wait_for(lambda: _async(not goals.runtime.link.connected))
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["nats"] != "ok"

    answered = []
    for i in range(40):
        r = await client.post(
            "/v1/cycles",
            json={"name": f"During outage {i}", "starts_on": "2027-01-01", "ends_on": "2027-03-31"},
        )
        assert r.status_code == 201, r.text  # the store first: commands keep succeeding
        answered.append(r.json()["position"])

    nats_server.start()
    app = goals.runtime.app
    await wait_for(
        lambda: _async(goals.runtime.relay.position == app.recorder.max_notification_id())
    )
    await wait_for(lambda: _ready(client))
    messages = await read_stream(nats_server.url, 41)
    assert_exactly_once_in_order(messages, app, 41)
    names = [b["data"]["name"] for b in bodies(messages)]
    assert names == ["Q"] + [f"During outage {i}" for i in range(40)]
    assert [f"goals:{b['sequence']}" for b in bodies(messages)][1:] == answered


async def _ready(client) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def test_relay_waits_for_a_missing_stream(goals_settings, nats_server):
    """Services never declare the stream: until it exists the relay retries, losing nothing."""
    import nats as nats_py

    nc = await nats_py.connect(nats_server.url)
    await nc.jetstream().delete_stream("OKR")
    app = store_events(goals_settings, 10)
    try:
        async with running_relay(app, nats_server.url, publish_timeout=1) as relay:
            await asyncio.sleep(1.0)
            assert relay.position == 0 and relay.last_error is not None
            from tests.support import declare_stream

            await declare_stream(nats_server.url)
            await wait_for(lambda: _async(relay.position == 10))
    finally:
        await nc.close()
    assert_exactly_once_in_order(await read_stream(nats_server.url, 10), app, 10)


def _schedule(app: GoalsApplication, names: list[str]) -> None:
    with command_context(CTX):
        app.save(*[Cycle.schedule(n, date(2027, 1, 1), date(2027, 3, 31)) for n in names])


async def test_saves_handed_over_are_published_as_the_store_would_publish_them(
    goals_settings, nats_server
):
    """Each save hands its committed events to the relay, which publishes them without
    reading them back: the store is read once at the start (recording the position is not a
    poll), and what goes out is byte for byte what the store's copy of each event makes."""
    app = GoalsApplication(store_env(goals_settings))
    reads = {"n": 0}
    read_log = app.recorder.read_log

    def counted(*args, **kwargs):
        reads["n"] += 1
        return read_log(*args, **kwargs)

    app.recorder.read_log = counted
    # A poll interval longer than the test: only the offers can bring these events out. Its
    # position is recorded often meanwhile, and that is no reason to read the store.
    async with running_relay(app, nats_server.url, poll_interval=60, record_every=0.01) as relay:
        app.on_recorded.append(relay.offer)
        await wait_for(lambda: _async(reads["n"] == 1))  # the start: nothing stored yet
        for i in range(20):  # saves of 1 to 5 events, from a thread as the writer saves
            await asyncio.to_thread(_schedule, app, [f"C{i}.{j}" for j in range(i % 5 + 1)])
        total = app.recorder.max_notification_id()
        await wait_for(lambda: _async(relay.position == total))
    assert total == 60
    assert reads["n"] == 1
    messages = await read_stream(nats_server.url, total)
    assert_exactly_once_in_order(messages, app, total)
    stored = app.recorder.select_notifications(None, total + 10)
    assert [m.data for m in messages] == [
        contract.encode(contract.envelope("goals", n.id, app.mapper.to_domain_event(n)))
        for n in stored
    ]


async def test_saves_not_handed_over_are_read_from_the_store(goals_settings, nats_server):
    """Events the relay was not told of (another writer on the store, a lost hand-over) are
    read from the store: at the next poll, or at once when an offer shows a gap before it."""
    app = GoalsApplication(store_env(goals_settings))
    other = GoalsApplication(store_env(goals_settings))  # not followed by the relay
    try:
        # Recording its position rarely, so that only a poll or an offer wakes it.
        async with running_relay(app, nats_server.url, poll_interval=0.3, record_every=60) as relay:
            app.on_recorded.append(relay.offer)
            await asyncio.to_thread(_schedule, app, ["A1", "A2"])
            await asyncio.to_thread(_schedule, other, ["B1"])  # only the poll finds it
            await wait_for(lambda: _async(relay.position == 3), timeout=5)
            relay.poll_interval = 60  # from here on, only the offer can make it read
            await asyncio.to_thread(_schedule, other, ["B2", "B3"])
            await asyncio.to_thread(_schedule, app, ["A3"])  # an offer after a gap: read at once
            await wait_for(lambda: _async(relay.position == 6), timeout=5)
    finally:
        other.close()
    messages = await read_stream(nats_server.url, 6)
    assert_exactly_once_in_order(messages, app, 6)
    assert [b["data"]["name"] for b in bodies(messages)] == ["A1", "A2", "B1", "B2", "B3", "A3"]


async def test_a_read_that_fails_mid_backlog_loses_nothing(goals_settings, nats_server):
    """The store failing on a page in the middle of a backlog: the relay starts again from
    what it recorded, and every event still goes out once, in order."""
    app = store_events(goals_settings, 1700)
    read_log = app.recorder.read_log
    failed: list[int] = []

    def reads(after, *args, **kwargs):
        if after == 1000 and not failed:
            failed.append(after)
            raise OperationalError("simulated: the store went away mid-backlog")
        return read_log(after, *args, **kwargs)

    app.recorder.read_log = reads
    await relay_until(app, nats_server.url, 1700)
    assert failed == [1000]
    assert_exactly_once_in_order(await read_stream(nats_server.url, 1700), app, 1700)


async def test_publishes_the_stream_rejects_hold_the_relay_until_it_takes_them(
    goals_settings, nats_server
):
    """JetStream refusing part of a page (here a stream full with `discard: new`): the relay
    moves only over the acknowledged prefix, says why it is stuck, and once the stream takes
    messages again publishes the rest, every event once, in order."""
    import nats as nats_py
    from nats.js.api import DiscardPolicy

    nc = await nats_py.connect(nats_server.url)
    js = nc.jetstream()
    config = (await js.stream_info("OKR")).config
    await js.update_stream(replace(config, max_msgs=300, discard=DiscardPolicy.NEW))
    app = store_events(goals_settings, 700)
    before = RELAY_DUPLICATES.labels("goals")._value.get()
    try:
        async with running_relay(app, nats_server.url, publish_timeout=2) as relay:
            await wait_for(lambda: _async(relay.last_error is not None))
            await asyncio.sleep(0.5)  # a retry or two against the full stream
            assert relay.position == 300
            assert "maximum messages exceeded" in relay.last_error
            assert not relay.caught_up

            await js.update_stream(replace(config, max_msgs=-1, discard=DiscardPolicy.OLD))
            await wait_for(lambda: _async(relay.position == 700))
    finally:
        await nc.close()
    # Each retry went on from what JetStream had acknowledged: nothing was sent twice.
    assert RELAY_DUPLICATES.labels("goals")._value.get() == before
    assert_exactly_once_in_order(await read_stream(nats_server.url, 700), app, 700)


async def _stream_lost(url: str) -> None:
    """NATS lost the stream's messages (a disk lost, a stream deleted): it is declared again,
    empty."""
    import nats

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream("OKR")
    finally:
        await nc.close()
    await declare_stream(url)
    assert await stream_count(url) == 0


def _rewind(settings: GoalsSettings, *args: str) -> int:
    return command(settings, GoalsApplication, ["relay-rewind", *args])


async def test_a_relay_rewound_to_the_start_publishes_every_event_again(
    goals_settings, nats_server, capsys
):
    """After NATS lost messages the relay had recorded as published, the operator stops the
    service and rewinds its relay: the whole log goes out again, once, in order."""
    app = store_events(goals_settings, 700)
    await relay_until(app, nats_server.url, 700)
    app.close()  # the service stopped
    await _stream_lost(nats_server.url)

    assert _rewind(goals_settings, "--to", "0") == 0
    assert "was at 700 and is now at 0" in capsys.readouterr().out

    app = GoalsApplication(store_env(goals_settings))
    assert app.recorder.max_tracking_id(RELAY_TRACKING_NAME) in (None, 0)
    await relay_until(app, nats_server.url, 700)
    assert_exactly_once_in_order(await read_stream(nats_server.url, 700), app, 700)
    assert app.recorder.max_tracking_id(RELAY_TRACKING_NAME) == 700


async def test_a_relay_rewound_part_way_publishes_what_follows_the_position(
    goals_settings, nats_server
):
    app = store_events(goals_settings, 700)
    await relay_until(app, nats_server.url, 700)
    app.close()
    await _stream_lost(nats_server.url)

    assert _rewind(goals_settings, "--to", "300") == 0
    app = GoalsApplication(store_env(goals_settings))
    assert app.recorder.max_tracking_id(RELAY_TRACKING_NAME) == 300
    await relay_until(app, nats_server.url, 700)
    messages = await read_stream(nats_server.url, 400)
    assert [b["sequence"] for b in bodies(messages)] == list(range(301, 701))
    app.close()


async def test_a_rewind_forward_or_below_zero_is_refused_and_changes_nothing(
    goals_settings, nats_server, capsys
):
    app = store_events(goals_settings, 20)
    try:
        assert _rewind(goals_settings, "--to", "5") == 2  # nothing published yet
        assert "it is at 0: moving it forward to 5" in capsys.readouterr().err
        await relay_until(app, nats_server.url, 20)
        for position in ("21", "-1"):
            assert _rewind(goals_settings, "--to", position) == 2
            assert "relay-rewind refused for the goals relay" in capsys.readouterr().err
        with pytest.raises(SystemExit) as usage:
            _rewind(goals_settings, "--to", "ten")
        assert usage.value.code == 2
        assert app.recorder.max_tracking_id(RELAY_TRACKING_NAME) == 20
        assert _rewind(goals_settings, "--to", "20") == 0  # where it is: nothing moves
        assert app.recorder.max_tracking_id(RELAY_TRACKING_NAME) == 20
    finally:
        app.close()


async def test_a_running_idle_relay_takes_a_rewind_at_its_next_poll(goals_settings, nats_server):
    """The service need not be stopped: an idle relay sees at its next poll that its
    position was moved back, and publishes from there, in order."""
    app = store_events(goals_settings, 700)
    try:
        async with running_relay(app, nats_server.url) as relay:
            await wait_for(lambda: _async(relay.position == 700 and relay.caught_up))
            await wait_for(lambda: _async(app.recorder.max_tracking_id(RELAY_TRACKING_NAME) == 700))
            await _stream_lost(nats_server.url)
            assert await asyncio.to_thread(_rewind, goals_settings, "--to", "300") == 0
            await wait_for(lambda: _async(relay.position == 700), timeout=10)
            messages = await read_stream(nats_server.url, 400)
            assert relay.last_error is None
        assert [b["sequence"] for b in bodies(messages)] == list(range(301, 701))
        assert app.recorder.max_tracking_id(RELAY_TRACKING_NAME) == 700
    finally:
        app.close()


async def test_a_busy_relay_never_records_over_a_rewind(goals_settings, nats_server):
    """A relay publishing when the rewind comes records its next position only over the one
    it recorded itself: finding it moved, it starts again from the rewound position, and
    every event from there reaches the stream once (JetStream drops the repeats)."""
    app = store_events(goals_settings, 700)
    try:
        # No polls: only a record can reveal the rewind. A record after every page.
        async with running_relay(app, nats_server.url, poll_interval=60, record_every=0) as relay:
            app.on_recorded.append(relay.offer)
            await wait_for(lambda: _async(relay.position == 700))
            await wait_for(lambda: _async(app.recorder.max_tracking_id(RELAY_TRACKING_NAME) == 700))
            await _stream_lost(nats_server.url)
            assert await asyncio.to_thread(_rewind, goals_settings, "--to", "300") == 0
            await asyncio.to_thread(_schedule, app, ["After1", "After2"])
            await wait_for(lambda: _async(relay.position == 702), timeout=10)
            await wait_for(lambda: _async(app.recorder.max_tracking_id(RELAY_TRACKING_NAME) == 702))
            messages = await read_stream(nats_server.url, 402)
        sequences = [b["sequence"] for b in bodies(messages)]
        assert sorted(sequences) == list(range(301, 703))  # each once, whatever the order
    finally:
        app.close()

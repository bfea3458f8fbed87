"""Duplicates and disorder: events that come again, or too early, change no view.

A whole quarter (cycle, objective, key result, target adjustment, check-ins and a correction,
a meeting, a review with a score, a reflection and a carry-over, finalised, and the goals
service's carried objective) runs through the four real services (SQLite) and a real
nats-server. Then, one fault at a time:

- copies of every published event, as new NATS messages;
- the same messages with their `Nats-Msg-Id`, inside JetStream's duplicate window (dropped by
  JetStream) and after it (stored again);
- every new event handed back (`nak`) by each consumer after it was applied: redelivered;
- consumers that applied new events and never acknowledged them, restarted: redelivered to
  the new processes;
- an aggregate's later event published before the one it follows;
- an event published after a later one of another aggregate (a relay's publish refused in the
  middle of a page while the later ones were stored): applied at once, and no position past
  the missing one counts as reached until it has come.

Every view (the projections' reads, the catalogues, the reviews' latest check-ins, every
consumer's tables, the goals store) is read in full before and after: duplicates must leave
it as it was, and the counters `okr_consumer_duplicates_total`, `_redelivered_total` and
`_rescheduled_total` must count what happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families

from shared import contract
from shared.relay import Relay
from tests.faults.report import record
from tests.faults.views import (
    applied,
    assert_unchanged,
    consumer_counts,
    consumers,
    grown,
    positions,
    quiet,
    settle,
    snapshot,
)
from tests.http.checkins_helpers import meeting_body
from tests.http.helpers import get_json
from tests.integration.test_quarter_shift import finalise, review_to_finalise
from tests.support import NatsServer, RunningService, declare_stream, read_stream, serve
from tests.system import app_for, service_settings

NAMES = ("goals", "checkins", "reviews", "projections")
DUPLICATE_WINDOW_S = 120  # the stream's default, restored after shrinking it


class System:
    """The four services on one nats-server, each of which can be restarted on its store."""

    def __init__(self, base: Path) -> None:
        self.nats = NatsServer(base / "nats")
        self.store = {"data_dir": base / "data"}
        self.services: dict[str, RunningService] = {}
        self._served: dict[str, AbstractAsyncContextManager[RunningService]] = {}
        self._relays: dict[str, Relay] = {}
        self.key_result = ""  # the quarter's key result, in the active cycle

    async def start(self, name: str) -> RunningService:
        served = serve(app_for(name, service_settings(name, self.store, self.nats.url)))
        svc = await served.__aenter__()
        self._served[name] = served
        self._relays[name] = svc.runtime.relay
        self.services[name] = svc
        return svc

    async def stop(self, name: str) -> None:
        svc = self.services.pop(name)
        if svc.runtime.relay is not self._relays[name]:  # a relay a test started
            await svc.runtime.relay.stop()
        await self._served.pop(name).__aexit__(None, None, None)

    async def restart(self, name: str) -> RunningService:
        await self.stop(name)
        return await self.start(name)

    async def publish(self, *messages: tuple[str, bytes, dict[str, str] | None]) -> list[Any]:
        """Publish raw messages on the stream; their JetStream acks."""
        nc = await nats.connect(self.nats.url)
        try:
            js = nc.jetstream()
            return [
                await js.publish(subject, data, stream="OKR", headers=headers)
                for subject, data, headers in messages
            ]
        finally:
            await nc.close()

    async def stream_messages(self) -> int:
        nc = await nats.connect(self.nats.url)
        try:
            return int((await nc.jetstream().stream_info("OKR")).state.messages)
        finally:
            await nc.close()


async def read(svc: RunningService, path: str) -> Any:
    r = await svc.client.get(path)
    assert r.status_code == 200, r.text
    return r.json()


async def quarter(services: dict[str, RunningService]) -> str:
    """A whole quarter through every service, ending with the carry-over into the next.
    Returns its key result (in the cycle that stays active)."""
    goals, checkins, reviews = services["goals"], services["checkins"], services["reviews"]
    review_id, _, key_result = await review_to_finalise(goals, checkins, reviews)
    review = await get_json(reviews.client, f"/v1/reviews/{review_id}")
    r = await goals.client.post(
        f"/v1/key-results/{key_result}/target", json={"target": 60, "reason": "too easy"}
    )
    assert r.status_code == 200, r.text
    history = await read(checkins, f"/v1/key-results/{key_result}/check-ins")
    r = await checkins.client.post(
        f"/v1/check-ins/{history['items'][0]['id']}/correct",
        json={"value": 22, "reason": "counted twice"},
    )
    assert r.status_code == 200, r.text
    r = await checkins.client.post(
        "/v1/teams/platform/check-in-meetings",
        json=meeting_body(review["cycle_id"], held_on=time.strftime("%Y-%m-%d")),
    )
    assert r.status_code == 201, r.text
    r = await reviews.client.post(
        f"/v1/reviews/{review_id}/reflections",
        json={"kind": "learned", "text": "Smaller experiments tell us sooner"},
    )
    assert r.status_code == 200, r.text
    r = await reviews.client.put(
        f"/v1/reviews/{review_id}/scores/{key_result}",
        json={"score": 0.5, "comment": "half way, honestly"},
    )
    assert r.status_code == 200, r.text
    await finalise(reviews, review_id)
    return key_result


@pytest.fixture(scope="module")
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    s = System(tmp_path_factory.mktemp("duplicates"))
    s.nats.start()
    try:
        await declare_stream(s.nats.url)
        for name in NAMES:
            await s.start(name)
        s.key_result = await quarter(s.services)
        await settle(s.services)
        yield s
        for name in reversed(NAMES):
            await s.stop(name)
    finally:
        s.nats.stop()


async def counts(s: System) -> dict[str, dict[str, float]]:
    svc = s.services["projections"]
    return {
        m: await consumer_counts(svc, m, s.services)
        for m in ("applied", "duplicates", "redelivered", "rescheduled", "rejected")
    }


def delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> Any:
    return {m: grown(before[m], after[m]) for m in before}


def figures(grew: dict[str, dict[str, int]]) -> dict[str, int]:
    """What every consumer together counted, for the report."""
    return {
        "duplicates": sum(grew["duplicates"].values()),
        "redelivered": sum(grew["redelivered"].values()),
        "rescheduled": sum(grew["rescheduled"].values()),
        "applied": sum(grew["applied"].values()),
        "rejected": sum(grew["rejected"].values()),
    }


def expected_per_consumer(s: System, subjects: list[str]) -> dict[str, int]:
    """How many of the messages on `subjects` each consumer receives."""
    return {
        c.durable: sum(1 for subject in subjects if c.follows(subject.split(".")[1]))
        for _, c in consumers(s.services)
    }


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.05)


# --- copies and republishes ---------------------------------------------------------------


def assert_covers_the_quarter(view: dict[str, Any]) -> None:
    """The snapshot holds what the quarter made, so comparing it means something."""
    reads = view["projections"]["reads"]
    assert len(reads["trees"]) == 2  # the cycle and the next one, with the carried objective
    assert all(tree["objectives"] for tree in reads["trees"].values())
    assert sum(len(h["items"]) for h in reads["check_ins"].values()) == 2
    assert [len(m["items"]) for m in reads["meetings"].values()] == [1]
    assert len(reads["reviews"]) == 1
    for name in ("checkins", "reviews"):
        assert len(view[name]["memory"]["key_results"]) == 2  # the original and the carried
    assert len(view["reviews"]["memory"]["latest"]) == 1
    assert view["goals"]["tables"]["goals-carry-over"]["{t}inbox_versions"]
    tables = view["projections"]["tables"]["projections-views"]
    assert {"{t}view_entities", "{t}view_history", "{t}view_audit"} <= set(tables), set(tables)
    assert len(tables["{t}view_audit"]) == len(reads["audit"]) == sum(view["stored"].values())
    assert view["checkins"]["tables"]["checkins-catalogue"]["{t}goals_key_results"]
    assert view["reviews"]["tables"]["reviews-catalogue"]["{t}latest_check_ins"]


async def test_copies_of_every_event_as_new_messages_change_no_view(system: System) -> None:
    at = await settle(system.services)
    before = await snapshot(system.services, at)
    assert_covers_the_quarter(before)
    metrics = await counts(system)
    messages = await read_stream(system.nats.url, sum(at.values()))
    # The same envelopes as new messages: no Nats-Msg-Id, so JetStream stores each again.
    started = time.perf_counter()
    acks = await system.publish(*((m.subject, m.data, None) for m in messages))
    assert not any(a.duplicate for a in acks)
    expected = expected_per_consumer(system, [m.subject for m in messages])

    async def counted() -> bool:
        return delta(metrics, await counts(system))["duplicates"] == expected

    await eventually(counted)
    await quiet(system.services)
    elapsed = time.perf_counter() - started
    after = await snapshot(system.services, at)
    assert_unchanged(before, after)
    grew = delta(metrics, await counts(system))
    assert grew["applied"] == {k: 0 for k in grew["applied"]}, grew
    assert not any(grew["rejected"].values()), grew
    record(
        "duplicates",
        "every published event again, as a new message (no Nats-Msg-Id)",
        "each consumer counted each as a duplicate; views unchanged",
        messages=len(messages),
        dropped_by_jetstream=0,
        **figures(grew),
        seconds=round(elapsed, 2),
    )


async def test_every_message_is_what_the_contract_makes_of_the_stored_event(
    system: System,
) -> None:
    """The relays build each message from the stored JSON directly: byte for byte what the
    contract's envelope of the mapper's domain event is, for every event of the quarter."""
    at = await settle(system.services)
    messages = with_msg_id(await read_stream(system.nats.url, sum(at.values())))
    seen: set[tuple[str, str]] = set()
    for m in messages:
        service = m.subject.split(".")[1]
        app = system.services[service].runtime.relay.app
        sequence = int(m.headers["Nats-Msg-Id"].rsplit(":", 1)[1])
        [n] = app.recorder.select_notifications(sequence, 1)
        event = app.mapper.to_domain_event(n)
        assert m.subject == contract.subject_for(service, type(event))
        assert m.data == contract.encode(contract.envelope(service, n.id, event)), m.subject
        seen.add((service, m.subject))
    # The quarter's events come from every service that publishes, of many kinds.
    assert {service for service, _ in seen} == {"goals", "checkins", "reviews"}
    assert len(seen) >= 16, sorted(seen)


def with_msg_id(messages: list[Msg]) -> list[Msg]:
    """The messages the relays published (the copies above have no Nats-Msg-Id)."""
    return [m for m in messages if "Nats-Msg-Id" in (m.headers or {})]


async def test_republishing_with_the_same_msg_id_inside_the_window_is_dropped(
    system: System,
) -> None:
    at = await settle(system.services)
    before = await snapshot(system.services, at)
    metrics = await counts(system)
    stored = await system.stream_messages()
    messages = with_msg_id(await read_stream(system.nats.url, stored))
    # What a relay that crashed before recording its position publishes again.
    started = time.perf_counter()
    acks = await system.publish(*((m.subject, m.data, m.headers) for m in messages))
    assert all(a.duplicate for a in acks), [a for a in acks if not a.duplicate][:3]
    assert await system.stream_messages() == stored
    await quiet(system.services)
    elapsed = time.perf_counter() - started
    assert_unchanged(before, await snapshot(system.services, at))
    grew = delta(metrics, await counts(system))
    assert not any(v for m in grew.values() for v in m.values()), grew
    record(
        "duplicates",
        "the relays' messages again, same Nats-Msg-Id, inside the duplicate window",
        "dropped by JetStream, never delivered; views unchanged",
        messages=len(messages),
        dropped_by_jetstream=sum(1 for a in acks if a.duplicate),
        **figures(grew),
        seconds=round(elapsed, 2),
    )


async def test_republishing_with_the_same_msg_id_after_the_window_changes_no_view(
    system: System,
) -> None:
    at = await settle(system.services)
    before = await snapshot(system.services, at)
    metrics = await counts(system)
    messages = with_msg_id(await read_stream(system.nats.url, sum(at.values())))
    # A relay down for longer than the window: JetStream has forgotten the ids.
    await declare_stream(system.nats.url, stream_duplicate_window_s=0.2)
    started = time.perf_counter()
    try:
        acks = []
        for m in messages:
            deadline = time.monotonic() + 5
            while (ack := (await system.publish((m.subject, m.data, m.headers)))[0]).duplicate:
                assert time.monotonic() < deadline, "JetStream never forgot the id"
                await asyncio.sleep(0.05)  # the window is still open for this id
            acks.append(ack)
    finally:
        await declare_stream(system.nats.url, stream_duplicate_window_s=DUPLICATE_WINDOW_S)
    expected = expected_per_consumer(system, [m.subject for m in messages])

    async def counted() -> bool:
        return delta(metrics, await counts(system))["duplicates"] == expected

    await eventually(counted)
    await quiet(system.services)
    elapsed = time.perf_counter() - started
    assert_unchanged(before, await snapshot(system.services, at))
    grew = delta(metrics, await counts(system))
    assert not any(grew["applied"].values()) and not any(grew["rejected"].values()), grew
    record(
        "duplicates",
        "the relays' messages again, same Nats-Msg-Id, after the duplicate window",
        "stored again by JetStream; each consumer counted each as a duplicate; views unchanged",
        messages=len(acks),
        dropped_by_jetstream=0,
        **figures(grew),
        seconds=round(elapsed, 2),
    )


# --- redeliveries -------------------------------------------------------------------------


async def new_events(s: System, n: int) -> None:
    """`n` target adjustments and `n` check-ins on the quarter's key result."""
    goals, checkins, key_result = s.services["goals"], s.services["checkins"], s.key_result
    for i in range(n):
        r = await goals.client.post(
            f"/v1/key-results/{key_result}/target",
            json={"target": 70 + i, "reason": f"fault test {time.monotonic()}"},
        )
        assert r.status_code == 200, r.text
        r = await checkins.client.post(
            f"/v1/key-results/{key_result}/check-ins",
            json={"value": 30 + i, "confidence": 6, "note": "", "blockers": []},
            params={"min_position": r.json()["position"]},
        )
        assert r.status_code == 201, r.text


async def test_events_handed_back_after_being_applied_change_no_view(system: System) -> None:
    """Each consumer applies each new event, then answers `nak` instead of `ack` the first
    time: JetStream redelivers it at once, and it is recognised."""
    await settle(system.services)
    handed_back: dict[str, int] = {}

    def nak_first(consumer: Any) -> Callable[[Sequence[Msg]], Coroutine[Any, Any, None]]:
        async def acknowledge(msgs: Sequence[Msg]) -> None:
            for msg in msgs:
                if msg.metadata.num_delivered == 1:
                    handed_back[consumer.durable] = handed_back.get(consumer.durable, 0) + 1
                    await msg.nak()
                else:
                    await msg.ack()

        return acknowledge

    for _, consumer in consumers(system.services):
        consumer.acknowledge = nak_first(consumer)  # type: ignore[method-assign, assignment]
    try:
        metrics = await counts(system)
        was = await positions(system.services)
        started = time.perf_counter()
        await new_events(system, 3)
        # Applied once everywhere (the consumers' positions), then read in full ...
        at = await positions(system.services)
        await applied(system.services, at)
        before = await snapshot(system.services, at)
        # ... and again once JetStream has redelivered every one and had it acknowledged.
        await quiet(system.services)
        elapsed = time.perf_counter() - started
        after = await snapshot(system.services, at)
    finally:
        for _, consumer in consumers(system.services):
            del consumer.acknowledge
    assert_unchanged(before, after)
    grew = delta(metrics, await counts(system))
    assert handed_back and all(handed_back.values()), handed_back
    for durable, n in handed_back.items():
        assert grew["redelivered"][durable] >= n, (durable, grew)
        assert grew["duplicates"][durable] >= n, (durable, grew)
        assert grew["applied"][durable] == n, (durable, grew)
    record(
        "duplicates",
        "new events, each handed back (nak) by every consumer after applying it",
        "redelivered at once and recognised; views as after the first delivery",
        messages=sum(at.values()) - sum(was.values()),
        dropped_by_jetstream=0,
        **figures(grew),
        seconds=round(elapsed, 2),
    )


async def test_consumers_restarted_before_acknowledging_change_no_view(system: System) -> None:
    """The consumers of checkins, reviews and projections commit each batch and never
    acknowledge it; then their services restart on the same stores. The new processes read
    what is unacknowledged back from the stream at once, and JetStream redelivers it to them
    after the ack wait: each time it is recognised."""
    await settle(system.services)
    restarted = ("checkins", "reviews", "projections")
    for name in restarted:
        for consumer in system.services[name].runtime.consumers:

            async def never(msgs: Sequence[Msg]) -> None:
                return None

            consumer.acknowledge = never  # type: ignore[method-assign, assignment]
    await new_events(system, 3)
    at = await positions(system.services)
    await applied(system.services, at)
    before = await snapshot(system.services, at)
    unacknowledged = {}
    for name in restarted:
        js = await system.services[name].runtime.link.wait()
        for c in system.services[name].runtime.consumers:
            info = await js.consumer_info(c.stream, c.durable)
            unacknowledged[c.durable] = info.num_ack_pending
    assert all(unacknowledged.values()), unacknowledged
    metrics = await counts(system)
    started = time.perf_counter()
    for name in restarted:
        await system.restart(name)
    await quiet(system.services)  # everything redelivered (after the ack wait) and acked
    elapsed = time.perf_counter() - started
    after = await snapshot(system.services, at)
    assert_unchanged(before, after)
    grew = delta(metrics, await counts(system))
    for durable, n in unacknowledged.items():
        assert grew["redelivered"][durable] >= n, (durable, grew)
        assert grew["duplicates"][durable] >= n, (durable, grew)
        assert grew["applied"][durable] == 0, (durable, grew)
    record(
        "duplicates",
        "checkins, reviews and projections restarted with applied, unacknowledged events",
        "read back from the stream by the new processes, then redelivered (after the ack wait);"
        " recognised each time; views unchanged",
        messages=sum(unacknowledged.values()),
        dropped_by_jetstream=0,
        **figures(grew),
        seconds=round(elapsed, 2),
    )


# --- disorder -----------------------------------------------------------------------------


def outbox(svc: RunningService, after: int) -> list[tuple[str, bytes, dict[str, str]]]:
    """The service's stored events after position `after`, as its relay would publish them."""
    app = svc.runtime.app
    service = svc.runtime.settings.service
    messages = []
    previous = after
    for n in app.recorder.select_notifications(after, 100, inclusive_of_start=False):
        event = app.mapper.to_domain_event(n)
        messages.append(
            (
                contract.subject_for(service, type(event)),
                contract.encode(contract.envelope(service, n.id, event)),
                {
                    "Nats-Msg-Id": contract.msg_id(f"okr/{service}", n.id),
                    contract.PREVIOUS_HEADER: str(previous),
                },
            )
        )
        previous = n.id
    return messages


async def republish(goals: RunningService, relay: Relay, up_to: int) -> float:
    """A fresh relay in place of the stopped `relay` publishes the goals events again up to
    `up_to`; how many JetStream reported as duplicates."""
    before = await relay_duplicate_count(goals)
    fresh = Relay(
        goals.runtime.app,
        "goals",
        goals.runtime.link,
        stream=relay.stream,
        batch_size=relay.batch_size,
        poll_interval=relay.poll_interval,
        publish_timeout=relay.publish_timeout,
    )
    goals.runtime.relay = fresh
    await fresh.start()

    async def republished() -> bool:
        return fresh.position >= up_to

    await eventually(republished)
    return await relay_duplicate_count(goals) - before


async def test_an_event_published_before_its_predecessor_waits_for_it(system: System) -> None:
    """Two target adjustments of one key result reach the stream in the wrong order (the
    later version first). Nothing applies the later one until the earlier has come; then
    both apply in version order. The relay, restarted, publishes them again with the same
    ids, and JetStream drops them."""
    s = system.services
    goals = s["goals"]
    at = await settle(s)
    relay = goals.runtime.relay
    await relay.stop()  # the two events stay in the store, unpublished
    key_result = system.key_result
    targets = [91.0, 92.0]
    for target in targets:
        r = await goals.client.post(
            f"/v1/key-results/{key_result}/target",
            json={"target": target, "reason": f"to {target}"},
        )
        assert r.status_code == 200, r.text
    before = await snapshot(s, at)  # stored, not yet published: no view has them
    first, second = await asyncio.to_thread(outbox, goals, relay.position)
    metrics = await counts(system)
    goals_followers = [c.durable for _, c in consumers(s) if c.follows("goals")]
    started = time.perf_counter()
    await system.publish(second)

    async def held_back() -> bool:
        grew = delta(metrics, await counts(system))["rescheduled"]
        return all(grew.get(d, 0) >= 1 for d in goals_followers)

    await eventually(held_back)
    # Handed back by every consumer of goals events, applied by none.
    assert_unchanged(before, await snapshot(s, at))

    await system.publish(first)
    later = {**at, "goals": at["goals"] + 2}
    await applied(s, later)
    await quiet(s)
    entries = [
        e
        for e in reversed((await read(s["projections"], "/v1/audit"))["items"])
        if e["entity_id"] == key_result and e["event_type"].endswith("target_adjusted")
    ]
    assert [e["changes"]["target"]["to"] for e in entries[-2:]] == targets
    assert entries[-1]["changes"]["target"]["from"] == targets[0]
    catalogue = s["checkins"].runtime.parts["catalogue"]
    assert (
        next(kr.target for kr in catalogue.key_results.values() if str(kr.id) == key_result)
        == targets[-1]
    )
    grew = delta(metrics, await counts(system))
    for durable in goals_followers:
        assert grew["applied"][durable] == 2, (durable, grew)
    ordered = await snapshot(s, later)

    # The relay comes back and publishes both again, with the same ids: dropped.
    stored = await system.stream_messages()
    assert await republish(goals, relay, later["goals"]) == 2
    assert await system.stream_messages() == stored
    await quiet(s)
    elapsed = time.perf_counter() - started
    assert_unchanged(ordered, await snapshot(s, later))
    grew = delta(metrics, await counts(system))
    record(
        "duplicates",
        "a key result's later event published before the one it follows; then the relay "
        "publishes both again",
        "held back (nak with delay) until its predecessor came, then both applied in order by "
        f"each of the {len(goals_followers)} consumers; the relay's copies dropped by JetStream",
        messages=2,
        dropped_by_jetstream=2,
        **figures(grew),
        seconds=round(elapsed, 2),
    )


async def relay_duplicate_count(svc: RunningService) -> float:
    text = (await svc.client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "okr_relay_duplicates":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["service"] == "goals":
                    return float(sample.value)
    return 0.0


async def test_an_event_published_after_a_later_one_holds_the_positions_past_it(
    system: System,
) -> None:
    """A new cycle, then a target adjustment of a key result (another aggregate), reach the
    stream in the wrong order, as when the relay's publish of the first was refused in the
    middle of a page and went out again after the rest. The adjustment applies at once
    everywhere, yet no consumer counts its position as reached, and a read with
    `min_position` answers 409, until the cycle has come: the adjustment's message named it
    as its predecessor. The relay, restarted, publishes both again: dropped."""
    s = system.services
    goals = s["goals"]
    at = await settle(s)
    relay = goals.runtime.relay
    await relay.stop()  # the two events stay in the store, unpublished
    r = await goals.client.post(
        "/v1/cycles", json={"name": "Q3", "starts_on": "2027-07-01", "ends_on": "2027-09-30"}
    )
    assert r.status_code == 201, r.text
    r = await goals.client.post(
        f"/v1/key-results/{system.key_result}/target", json={"target": 93, "reason": "to 93"}
    )
    assert r.status_code == 200, r.text
    late = at["goals"] + 2
    first, second = await asyncio.to_thread(outbox, goals, relay.position)
    metrics = await counts(system)
    followers = [c for _, c in consumers(s) if c.follows("goals")]
    started = time.perf_counter()
    await system.publish(second)

    async def past_it() -> bool:
        return all(c.positions.get("okr/goals", 0) >= late for c in followers)

    await eventually(past_it)
    assert not any(c.reached("okr/goals", late) for c in followers)
    r = await s["projections"].client.get(f"/v1/audit?min_position=goals:{late}")
    assert r.status_code == 409, r.text
    assert "earlier events still to come" in r.json()["detail"]

    await system.publish(first)
    later = {**at, "goals": late}
    await applied(s, later)
    assert all(c.reached("okr/goals", late) for c in followers)
    r = await s["projections"].client.get(f"/v1/audit?min_position=goals:{late}")
    assert r.status_code == 200, r.text
    await quiet(s)
    grew = delta(metrics, await counts(system))
    for follower in followers:
        assert grew["applied"][follower.durable] == 2, (follower.durable, grew)

    stored = await system.stream_messages()
    assert await republish(goals, relay, late) == 2
    assert await system.stream_messages() == stored
    await quiet(s)
    elapsed = time.perf_counter() - started
    record(
        "duplicates",
        "a new cycle published after a later event of another aggregate (a relay's publish "
        "refused mid-page); then the relay publishes both again",
        "the later one applied at once; a read with min_position past the cycle answered 409 "
        f"until it came, at each of the {len(followers)} consumers; the relay's copies "
        "dropped by JetStream",
        messages=2,
        dropped_by_jetstream=2,
        **figures(delta(metrics, await counts(system))),
        seconds=round(elapsed, 2),
    )

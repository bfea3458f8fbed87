"""The review service's events reach NATS as CloudEvents 1.0 envelopes, on the same stream
as the goals and checkins events, with the command context of the request that caused them;
refused and replayed commands publish nothing. A finalised review's carry-over makes the goals
service publish the carried objective, caused by the finalised event and in its conversation.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime
from typing import Any

from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from shared.contract import carried_key_result_id, carried_objective_id
from tests.http.checkins_helpers import caught_up, check_in, plan
from tests.http.helpers import (
    add_key_result,
    assert_problem,
    create_cycle,
    create_objective,
    stored,
)
from tests.http.reviews_helpers import synced
from tests.support import auth, read_stream

ENVELOPE_KEYS = {
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "data",
    "sequence",
    "aggregateversion",
    "actor",
    "correlationid",
    "causationid",
}
REVIEW = "okr.reviews.cycle_review"
CARRIED_OVER = "okr.goals.objective.carried_over"


def answered(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


async def until_on_stream(url: str, subject: str, timeout: float = 15.0) -> list[Any]:
    """Every message on the stream, once one on `subject` is among them (polling)."""
    deadline = time.monotonic() + timeout
    while True:
        messages = await read_stream(url, 0)
        if any(m.subject == subject for m in messages):
            return messages
        if time.monotonic() > deadline:
            seen = sorted({m.subject for m in messages})
            raise AssertionError(f"nothing on {subject} within {timeout}s; subjects: {seen}")
        await asyncio.sleep(0.1)


def assert_cloudevent(message: Any, envelope: dict[str, Any], source: str) -> None:
    """An independent check: the CloudEvents SDK accepts the envelope as a v1.0 event."""
    event = JSONFormat().read(CloudEvent, message.data)
    assert event.get_specversion() == "1.0"
    assert event.get_id() == envelope["id"]
    assert event.get_source() == source
    assert event.get_type() == envelope["type"] == f"{message.subject}.v1"
    assert event.get_subject() == envelope["subject"]
    assert event.get_time() == datetime.fromisoformat(envelope["time"])
    assert event.get_datacontenttype() == "application/json"
    assert event.get_data() == envelope["data"]
    for name in ("sequence", "aggregateversion", "actor", "correlationid", "causationid"):
        assert event.get_extension(name) == envelope[name]


async def test_review_events_on_nats_and_the_carry_over_they_cause(
    goals, checkins, reviews, reviews_settings
):
    # Platform's cycle: one objective to carry over (a key result checked in at 40 of 0 -> 100,
    # one never checked in), one to drop; and the next cycle.
    p = await plan(goals, checkins, start=0, target=100)
    kr = p.key_result_id
    docs_kr = await add_key_result(goals.client, p.objective_id, title="Docs", start=0, target=10)
    costs = await create_objective(goals.client, p.cycle_id, title="Cut costs")
    spend_kr = await add_key_result(goals.client, costs, title="Spend", start=100, target=50)
    next_cycle = await create_cycle(goals.client, name="Q2 2027")
    await caught_up(checkins, goals)
    await check_in(checkins.client, kr, value=40)
    await synced(reviews, goals, checkins)
    client = reviews.client

    # Alice opens the review, under a correlation id.
    r = await client.post(
        "/v1/reviews",
        json={"cycle_id": p.cycle_id, "team": "platform"},
        headers={"X-Correlation-Id": "corr-review", "X-Request-Id": "req-1"},
    )
    review_id = answered(r, 201)["id"]
    assert r.json()["position"] == "reviews:1"
    base = f"/v1/reviews/{review_id}"
    # Refused: nothing is stored, nothing is published.
    assert_problem(await client.put(f"{base}/scores/{kr}", json={"score": 1.5}), 422)
    assert_problem(await client.put(f"{base}/scores/{kr}", json={"score": 0.9}), 422)
    assert_problem(await client.post(f"{base}/finalise"), 409)
    r = await client.post(
        f"{base}/reflections", json={"kind": "learned", "text": "x"}, headers={"If-Match": '"9"'}
    )
    assert_problem(r, 412)
    # Bob scores, without any context header; carol changes his score.
    r = await client.put(
        f"{base}/scores/{kr}",
        json={"score": 0.6, "comment": "landed late"},
        headers={**auth("bob"), "X-Request-Id": "req-2"},
    )
    assert answered(r, 200)["position"] == "reviews:2"
    r = await client.put(
        f"{base}/scores/{kr}",
        json={"score": 0.5, "comment": " half way "},
        headers={**auth("carol"), "X-Correlation-Id": "corr-review", "X-Request-Id": "req-3"},
    )
    assert answered(r, 200)["position"] == "reviews:3"
    # A reflection, sent twice with one key: the retry is answered, not stored or published.
    headers = {
        "Idempotency-Key": "reflect-once",
        "X-Correlation-Id": "corr-review",
        "X-Request-Id": "req-4",
    }
    reflection = {"kind": "went_well", "text": "  Pairing with support "}
    r = await client.post(f"{base}/reflections", json=reflection, headers=headers)
    reflected = answered(r, 200)
    assert reflected["position"] == "reviews:4"
    retry = await client.post(
        f"{base}/reflections",
        json=reflection,
        headers={**headers, "X-Correlation-Id": "corr-other", "X-Request-Id": "req-other"},
    )
    assert (retry.json(), retry.headers["idempotent-replayed"]) == (reflected, "true")
    # The quarter shift: carry the first objective over, drop the second, then finalise.
    shift = {"X-Correlation-Id": "corr-shift"}
    r = await client.post(
        f"{base}/carry-over",
        json={
            "objective_id": p.objective_id,
            "decision": "carry_over",
            "next_cycle_id": next_cycle,
        },
        headers={**shift, "X-Request-Id": "req-5"},
    )
    assert answered(r, 200)["position"] == "reviews:5"
    r = await client.post(
        f"{base}/carry-over",
        json={"objective_id": costs, "decision": "drop"},
        headers={**shift, "X-Request-Id": "req-6"},
    )
    assert answered(r, 200)["position"] == "reviews:6"
    # A check-in after the review opened: the carried key result starts from it.
    await check_in(checkins.client, kr, value=55)
    await synced(reviews, goals, checkins)
    r = await client.post(
        f"{base}/finalise", headers={**auth("dave"), **shift, "X-Request-Id": "req-7"}
    )
    assert answered(r, 200)["position"] == "reviews:7"
    assert await stored(reviews) == 7

    # The goals service creates the carried objective on its own time: poll the stream.
    messages = await until_on_stream(reviews_settings.nats_url, CARRIED_OVER)
    envelopes = [json.loads(m.data) for m in messages]
    ours = [
        (m, e) for m, e in zip(messages, envelopes, strict=True) if e["source"] == "okr/reviews"
    ]
    assert all(m.subject.startswith("okr.reviews.") for m, _ in ours)
    assert sum(m.subject.startswith("okr.reviews.") for m in messages) == len(ours) == 7
    assert sum(m.subject.startswith("okr.checkins.") for m in messages) == await stored(checkins)

    expected = [
        (f"{REVIEW}.opened", 1, "alice", "corr-review", "req-1"),
        (f"{REVIEW}.scored", 2, "bob", "req-2", "req-2"),
        (f"{REVIEW}.scored", 3, "carol", "corr-review", "req-3"),
        (f"{REVIEW}.reflected", 4, "alice", "corr-review", "req-4"),
        (f"{REVIEW}.carry_over_decided", 5, "alice", "corr-shift", "req-5"),
        (f"{REVIEW}.carry_over_decided", 6, "alice", "corr-shift", "req-6"),
        (f"{REVIEW}.finalised", 7, "dave", "corr-shift", "req-7"),
    ]
    assert [
        (m.subject, e["sequence"], e["actor"], e["correlationid"], e["causationid"])
        for m, e in ours
    ] == expected
    # The retried reflection's context (corr-other, req-other) is nowhere: it published nothing.
    contexts = {e[k] for e in envelopes for k in ("correlationid", "causationid")}
    assert not {"corr-other", "req-other"} & contexts

    for (message, envelope), version in zip(ours, range(1, 8), strict=True):
        assert set(envelope) == ENVELOPE_KEYS, envelope
        assert envelope["specversion"] == "1.0"
        assert envelope["source"] == "okr/reviews"
        assert envelope["type"] == f"{message.subject}.v1"
        assert envelope["subject"] == review_id
        assert envelope["aggregateversion"] == version == envelope["sequence"]
        assert envelope["datacontenttype"] == "application/json"
        assert type(envelope["sequence"]) is int and type(envelope["aggregateversion"]) is int
        assert message.headers["Nats-Msg-Id"] == f"okr/reviews:{envelope['sequence']}"
        assert datetime.fromisoformat(envelope["time"]).tzinfo is not None
        uuid.UUID(envelope["id"])
        assert not {"actor", "originator_id", "timestamp", "correlation_id"} & set(envelope["data"])
        assert_cloudevent(message, envelope, "okr/reviews")
    assert len({e["id"] for _, e in ours}) == 7

    opened, bobs, carols, reflection_event, carried, dropped, finalised = (
        e["data"] for _, e in ours
    )
    assert opened["cycle_id"] == p.cycle_id
    assert opened["team"] == "platform"
    assert sorted(opened["objectives"], key=lambda o: o["title"]) == [
        {"objective_id": costs, "title": "Cut costs"},
        {"objective_id": p.objective_id, "title": "Delight our customers"},
    ]
    by_id = {k["key_result_id"]: k for k in opened["key_results"]}
    assert len(opened["key_results"]) == 3
    assert by_id == {
        kr: {
            "key_result_id": kr,
            "objective_id": p.objective_id,
            "title": "Raise NPS",
            "kind": "number",
            "start": 0,
            "target": 100,
            "last_value": 40,
            "progress": 0.4,
            "suggested_score": 0.4,
        },
        docs_kr: {
            "key_result_id": docs_kr,
            "objective_id": p.objective_id,
            "title": "Docs",
            "kind": "number",
            "start": 0,
            "target": 10,
            "last_value": None,
            "progress": 0.0,
            "suggested_score": 0.0,
        },
        spend_kr: {
            "key_result_id": spend_kr,
            "objective_id": costs,
            "title": "Spend",
            "kind": "number",
            "start": 100,
            "target": 50,
            "last_value": None,
            "progress": 0.0,
            "suggested_score": 0.0,
        },
    }
    assert bobs == {
        "key_result_id": kr,
        "score": 0.6,
        "suggested_score": 0.4,
        "comment": "landed late",
        "previous_score": None,
        "previous_comment": None,
    }
    assert carols == {
        "key_result_id": kr,
        "score": 0.5,
        "suggested_score": 0.4,
        "comment": "half way",
        "previous_score": 0.6,
        "previous_comment": "landed late",
    }
    assert reflection_event == {
        "reflection_id": reflected["reflection_id"],
        "kind": "went_well",
        "text": "Pairing with support",
    }
    assert carried == {
        "objective_id": p.objective_id,
        "decision": "carry_over",
        "next_cycle_id": next_cycle,
        "previous_decision": None,
        "previous_next_cycle_id": None,
    }
    assert dropped == {
        "objective_id": costs,
        "decision": "drop",
        "next_cycle_id": None,
        "previous_decision": None,
        "previous_next_cycle_id": None,
    }
    # In the order of the opened event; carried key results start from their latest value.
    order = [k["key_result_id"] for k in opened["key_results"]]
    decisions = {d["objective_id"]: d for d in finalised["decisions"]}
    assert set(finalised) == {"cycle_id", "team", "decisions", "scores", "lessons"}
    assert (finalised["cycle_id"], finalised["team"]) == (p.cycle_id, "platform")
    assert len(finalised["decisions"]) == 2
    assert decisions[p.objective_id] == {
        "objective_id": p.objective_id,
        "decision": "carry_over",
        "next_cycle_id": next_cycle,
        "key_results": [
            {"key_result_id": k, "start": {kr: 55.0, docs_kr: 0.0}[k]}
            for k in order
            if k in (kr, docs_kr)
        ],
    }
    assert decisions[costs] == {
        "objective_id": costs,
        "decision": "drop",
        "next_cycle_id": None,
        "key_results": [],
    }
    # Unscored key results keep their suggestion.
    assert finalised["scores"] == [
        {
            "key_result_id": k,
            "score": {kr: 0.5}.get(k, 0.0),
            "suggested_score": {kr: 0.4}.get(k, 0.0),
        }
        for k in order
    ]
    assert finalised["lessons"] == [{"kind": "went_well", "text": "Pairing with support"}]

    # The goals service's answer: the carried objective, caused by the finalised event.
    final = ours[6][1]
    carried_id = str(carried_objective_id(review_id, p.objective_id))
    carried_krs = {str(carried_key_result_id(carried_id, k)) for k in (kr, docs_kr)}
    theirs = [
        (m, e)
        for m, e in zip(messages, envelopes, strict=True)
        if e["source"] == "okr/goals" and e["subject"] in {carried_id} | carried_krs
    ]
    shifted = [(m, e) for m, e in theirs if m.subject == CARRIED_OVER]
    assert len(shifted) == 1
    message, envelope = shifted[0]
    assert envelope["subject"] == carried_id
    assert envelope["causationid"] == final["id"]
    assert envelope["correlationid"] == final["correlationid"] == "corr-shift"
    assert envelope["actor"] == "dave"
    assert envelope["data"] == {
        "origin_objective_id": p.objective_id,
        "origin_cycle_id": p.cycle_id,
        "review_id": review_id,
        "lessons": [{"kind": "went_well", "text": "Pairing with support"}],
    }
    assert message.headers["Nats-Msg-Id"] == f"okr/goals:{envelope['sequence']}"
    assert set(envelope) == ENVELOPE_KEYS
    assert_cloudevent(message, envelope, "okr/goals")
    # Everything the goals service did about it (objective and key results) shares that cause.
    assert {(e["causationid"], e["correlationid"]) for _, e in theirs} == {
        (final["id"], "corr-shift")
    }
    # The review names the carried objective once it is final.
    review = answered(await client.get(base), 200)
    assert [o["carried_objective_id"] for o in review["objectives"] if o["decision"]] == [
        carried_id if o["objective_id"] == p.objective_id else None
        for o in review["objectives"]
        if o["decision"]
    ]


async def test_the_reviews_consumer_lingers_as_set_and_the_projections_does_not(
    reviews: Any, projections: Any
) -> None:
    # Suggested scores are read at a person's pace; the projections' delay is the latency
    # every read-your-writes client waits for.
    assert [c.linger for c in reviews.runtime.consumers] == [0.02]
    assert [c.linger for c in projections.runtime.consumers] == [0.0]

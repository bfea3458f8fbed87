"""The check-in service's events reach NATS as CloudEvents 1.0 envelopes (DESIGN §4, §6), on
the same stream as the goals events, with the command context of the request that caused
them; refused commands publish nothing."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tests.http.checkins_helpers import check_in_body, meeting_body, plan
from tests.http.helpers import assert_problem, stored
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
PROGRESS = "okr.checkins.key_result_progress"
MEETING = "okr.checkins.team_check_in"


def answered(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_check_in_events_on_nats(goals, checkins, checkins_settings):
    p = await plan(goals, checkins)
    client = checkins.client
    kr = p.key_result_id
    today = datetime.now(UTC).date().isoformat()

    # Alice checks in (opening the key result's progress), under a correlation id.
    r = await client.post(
        f"/v1/key-results/{kr}/check-ins",
        json=check_in_body(blockers=["  waiting on legal "]),
        headers={"X-Correlation-Id": "corr-week-1", "X-Request-Id": "req-1"},
    )
    first = answered(r, 201)
    assert (first["version"], first["position"]) == (2, "checkins:2")
    # Refused: nothing is stored, nothing is published.
    r = await client.post(f"/v1/key-results/{kr}/check-ins", json=check_in_body(confidence=12))
    assert_problem(r, 422)
    r = await client.post(
        f"/v1/check-ins/{first['id']}/correct", json={"value": 30, "reason": "same"}
    )
    assert_problem(r, 409)
    r = await client.post(
        f"/v1/key-results/{kr}/check-ins", json=check_in_body(), headers={"If-Match": '"1"'}
    )
    assert_problem(r, 412)
    # Bob checks in, without any context header.
    r = await client.post(
        f"/v1/key-results/{kr}/check-ins",
        json=check_in_body(value=40, confidence=5, note="", blockers=[]),
        headers={**auth("bob"), "X-Request-Id": "req-2"},
    )
    second = answered(r, 201)
    assert second["position"] == "checkins:3"
    # Carol corrects alice's check-in.
    r = await client.post(
        f"/v1/check-ins/{first['id']}/correct",
        json={"value": 35, "reason": "typo"},
        headers={**auth("carol"), "X-Correlation-Id": "corr-week-1", "X-Request-Id": "req-3"},
    )
    corrected = answered(r, 200)
    assert (corrected["id"], corrected["position"]) == (first["id"], "checkins:4")
    # The team holds its meeting, then amends two of its lists.
    held_body = meeting_body(p.cycle_id, held_on=today, blockers=["flaky CI"])
    r = await client.post(
        "/v1/teams/platform/check-in-meetings",
        json=held_body,
        headers={"X-Correlation-Id": "corr-meeting", "X-Request-Id": "req-4"},
    )
    held = answered(r, 201)
    assert held["position"] == "checkins:5"
    r = await client.post("/v1/teams/platform/check-in-meetings", json=held_body)
    assert_problem(r, 409)
    r = await client.patch(
        f"/v1/check-in-meetings/{held['id']}",
        json={
            "wins": held_body["wins"] + ["Closed the export"],
            "priorities": ["Ship the audit log"],
            "blockers": ["flaky CI"],  # given, but unchanged
            "reason": "forgot a win",
        },
        headers={"X-Correlation-Id": "corr-meeting", "X-Request-Id": "req-5"},
    )
    amended = answered(r, 200)
    assert amended["position"] == "checkins:6"

    progress = answered(await client.get(f"/v1/key-results/{kr}/progress"), 200)
    progress_id = progress["id"]
    own, theirs = await stored(checkins), await stored(goals)
    assert own == 6
    messages = await read_stream(checkins_settings.nats_url, own + theirs)
    assert len(messages) == own + theirs
    assert sum(m.subject.startswith("okr.goals.") for m in messages) == theirs
    messages = [m for m in messages if m.subject.startswith("okr.checkins.")]
    envelopes = [json.loads(m.data) for m in messages]

    expected = [
        (f"{PROGRESS}.opened", progress_id, 1, 1, "alice", "corr-week-1", "req-1"),
        (f"{PROGRESS}.checked_in", progress_id, 2, 2, "alice", "corr-week-1", "req-1"),
        (f"{PROGRESS}.checked_in", progress_id, 3, 3, "bob", "req-2", "req-2"),
        (f"{PROGRESS}.check_in_corrected", progress_id, 4, 4, "carol", "corr-week-1", "req-3"),
        (f"{MEETING}.held", held["id"], 1, 5, "alice", "corr-meeting", "req-4"),
        (f"{MEETING}.amended", held["id"], 2, 6, "alice", "corr-meeting", "req-5"),
    ]
    assert [
        (
            m.subject,
            e["subject"],
            e["aggregateversion"],
            e["sequence"],
            e["actor"],
            e["correlationid"],
            e["causationid"],
        )
        for m, e in zip(messages, envelopes, strict=True)
    ] == expected

    for message, envelope in zip(messages, envelopes, strict=True):
        assert set(envelope) == ENVELOPE_KEYS, envelope
        assert envelope["specversion"] == "1.0"
        assert envelope["source"] == "okr/checkins"
        version = 2 if message.subject == f"{MEETING}.amended" else 1
        assert envelope["type"] == f"{message.subject}.v{version}"
        assert envelope["datacontenttype"] == "application/json"
        assert type(envelope["sequence"]) is int and type(envelope["aggregateversion"]) is int
        assert message.headers["Nats-Msg-Id"] == f"okr/checkins:{envelope['sequence']}"
        assert datetime.fromisoformat(envelope["time"]).tzinfo is not None
        uuid.UUID(envelope["id"])
        assert not {"actor", "originator_id", "timestamp", "correlation_id"} & set(envelope["data"])
    assert len({e["id"] for e in envelopes}) == 6

    opened, checked_in, bobs, correction, meeting, amendment = (e["data"] for e in envelopes)
    assert opened == {"key_result_id": kr, "objective_id": p.objective_id, "cycle_id": p.cycle_id}
    assert checked_in == {
        "check_in_id": first["id"],
        "key_result_id": kr,
        "number": 1,
        "value": 30.0,
        "confidence": 7,
        "note": "good week",
        "blockers": ["waiting on legal"],
    }
    assert bobs == {
        "check_in_id": second["id"],
        "key_result_id": kr,
        "number": 2,
        "value": 40.0,
        "confidence": 5,
        "note": "",
        "blockers": [],
    }
    assert correction == {
        "check_in_id": first["id"],
        "key_result_id": kr,
        "value": 35.0,
        "confidence": 7,
        "previous_value": 30.0,
        "previous_confidence": 7,
        "reason": "typo",
    }
    assert meeting == {
        "team": "platform",
        "cycle_id": p.cycle_id,
        "held_on": today,
        "wins": held_body["wins"],
        "learnings": held_body["learnings"],
        "blockers": ["flaky CI"],
        "priorities": held_body["priorities"],
    }
    assert amendment == {
        "changes": {
            "wins": {"from": held_body["wins"], "to": held_body["wins"] + ["Closed the export"]},
            "priorities": {"from": held_body["priorities"], "to": ["Ship the audit log"]},
        },
        "reason": "forgot a win",
    }

    # An independent check: the CloudEvents SDK accepts every envelope as a v1.0 event.
    for message, envelope in zip(messages, envelopes, strict=True):
        event = JSONFormat().read(CloudEvent, message.data)
        assert event.get_specversion() == "1.0"
        assert event.get_id() == envelope["id"]
        assert event.get_source() == "okr/checkins"
        assert event.get_type() == envelope["type"]
        assert event.get_subject() == envelope["subject"]
        assert event.get_time() == datetime.fromisoformat(envelope["time"])
        assert event.get_datacontenttype() == "application/json"
        assert event.get_data() == envelope["data"]
        for name in ("sequence", "aggregateversion", "actor", "correlationid", "causationid"):
            assert event.get_extension(name) == envelope[name]


async def test_a_replayed_command_publishes_nothing_more(goals, checkins, checkins_settings):
    p = await plan(goals, checkins)
    headers = {"Idempotency-Key": "once", "X-Correlation-Id": "corr-retry"}
    path = f"/v1/key-results/{p.key_result_id}/check-ins"
    first = await checkins.client.post(path, json=check_in_body(), headers=headers)
    assert first.status_code == 201, first.text
    retry = await checkins.client.post(
        path, json=check_in_body(), headers={**headers, "X-Correlation-Id": "corr-other"}
    )
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    # One more check-in: the relay publishes in store order, so anything the retry had
    # published would come before it.
    r = await checkins.client.post(path, json=check_in_body(value=31))
    assert r.json()["position"] == "checkins:3"
    theirs = await stored(goals)
    messages = await read_stream(checkins_settings.nats_url, theirs + 3)
    assert len(messages) == theirs + 3
    ours = [json.loads(m.data) for m in messages if m.subject.startswith("okr.checkins.")]
    assert [(e["type"], e["sequence"], e["correlationid"]) for e in ours] == [
        (f"{PROGRESS}.opened.v1", 1, "corr-retry"),
        (f"{PROGRESS}.checked_in.v1", 2, "corr-retry"),
        (f"{PROGRESS}.checked_in.v1", 3, ours[2]["causationid"]),
    ]

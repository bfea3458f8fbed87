"""The projections over HTTP: the OKR tree with its formulas, the past as it was (`as_of`),
the audit trail with filters and stable cursors, CSV export, and the other views — all built
from the events of real goals, checkins and reviews services on a real NATS."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.http.checkins_helpers import check_in, plan
from tests.http.helpers import add_key_result, assert_problem, create_objective
from tests.support import RunningService, auth


async def positions(*services: RunningService) -> list[str]:
    """The current end of each service's log, as `min_position` values."""
    out = []
    for svc in services:
        n = await asyncio.to_thread(svc.runtime.app.recorder.max_notification_id)
        if n:
            out.append(f"{svc.runtime.settings.service}:{n}")
    return out


async def read(
    projections: RunningService, path: str, *after: RunningService, **params: Any
) -> Any:
    """GET `path` once the projections have every event the given services stored so far."""
    r = await projections.client.get(
        path, params={**params, "min_position": await positions(*after)}
    )
    assert r.status_code == 200, r.text
    return r.json()


def now() -> str:
    return datetime.now(UTC).isoformat()


# --- the tree -----------------------------------------------------------------------------


async def test_the_tree_with_progress_confidence_and_rollups(
    goals: RunningService, checkins: RunningService, projections: RunningService
) -> None:
    p = await plan(goals, checkins, start=0, target=100, weight=3)
    second = await add_key_result(goals.client, p.objective_id, title="Churn", start=10, target=2)
    done = await add_key_result(
        goals.client, p.objective_id, title="Guide", kind="boolean", start=0, target=1, weight=1
    )
    child = await create_objective(goals.client, p.cycle_id, parent_id=p.objective_id, title="Kid")
    child_kr = await add_key_result(goals.client, child, start=0, target=10, weight=1)
    removed = await add_key_result(goals.client, p.objective_id, title="Gone")
    r = await goals.client.post(f"/v1/key-results/{removed}/remove", json={"reason": "x"})
    assert r.status_code == 200
    from tests.http.checkins_helpers import caught_up

    await caught_up(checkins, goals)
    await check_in(checkins.client, p.key_result_id, value=40, confidence=8)
    await check_in(checkins.client, second, value=6, confidence=5)
    await check_in(checkins.client, done, value=1, confidence=2)
    await check_in(checkins.client, child_kr, value=10, confidence=9)

    tree = await read(projections, f"/v1/cycles/{p.cycle_id}/okrs", goals, checkins)
    assert tree["cycle"]["status"] == "active" and tree["as_of"] is None
    nodes = {o["id"]: o for o in tree["objectives"]}
    parent = nodes[p.objective_id]
    krs = {k["id"]: k for k in parent["key_results"]}
    assert set(krs) == {p.key_result_id, second, done}  # the removed one is gone
    assert (krs[p.key_result_id]["progress"], krs[p.key_result_id]["status"]) == (0.4, "on_track")
    assert (krs[second]["progress"], krs[second]["status"]) == (0.5, "at_risk")  # 10 → 2, at 6
    assert (krs[done]["progress"], krs[done]["status"]) == (1.0, "off_track")
    assert krs[p.key_result_id]["last_check_in_at"] is not None
    # Weighted by 3, 2 (default weight in the helper body) and 1.
    weights = {k: krs[k]["weight"] for k in krs}
    expected = (0.4 * weights[p.key_result_id] + 0.5 * weights[second] + 1.0 * 1) / sum(
        weights.values()
    )
    assert parent["progress"] == round(expected, 4)
    assert parent["children"] == [child]
    assert nodes[child]["parent_id"] == p.objective_id and nodes[child]["progress"] == 1.0
    assert parent["rollup"] == round((expected + 1.0) / 2, 4)

    r = await projections.client.get("/v1/cycles/8b0c1f55-8e0e-4c43-9f0e-3c1f7e2b9a11/okrs")
    assert_problem(r, 404)


async def test_as_of_answers_exactly_as_the_tree_was_at_every_moment(
    goals: RunningService, checkins: RunningService, projections: RunningService
) -> None:
    observed: list[tuple[str, Any]] = []

    async def observe() -> None:
        tree = await read(projections, f"/v1/cycles/{p.cycle_id}/okrs", goals, checkins)
        await asyncio.sleep(0.01)
        observed.append((now(), tree))
        await asyncio.sleep(0.01)

    before_anything = now()
    await asyncio.sleep(0.01)
    p = await plan(goals, checkins, start=0, target=50)
    await observe()
    first = await check_in(checkins.client, p.key_result_id, value=10, confidence=6)
    await observe()
    r = await goals.client.post(
        f"/v1/key-results/{p.key_result_id}/target", json={"target": 80, "reason": "stretch"}
    )
    assert r.status_code == 200
    await observe()
    r = await goals.client.patch(f"/v1/key-results/{p.key_result_id}", json={"weight": 5})
    assert r.status_code == 200
    await observe()
    r = await checkins.client.post(
        f"/v1/check-ins/{first}/correct", json={"value": 12, "reason": "late invoice"}
    )
    assert r.status_code == 200
    await observe()
    other = await create_objective(goals.client, p.cycle_id, title="Later", team="platform")
    r = await goals.client.patch(f"/v1/objectives/{other}", json={"parent_id": p.objective_id})
    assert r.status_code == 200
    await observe()

    for moment, live in observed:
        past = await read(projections, f"/v1/cycles/{p.cycle_id}/okrs", as_of=moment)
        assert past["as_of"] is not None
        assert past["objectives"] == live["objectives"], moment
        assert past["cycle"] == live["cycle"]
    r = await projections.client.get(
        f"/v1/cycles/{p.cycle_id}/okrs", params={"as_of": before_anything}
    )
    assert_problem(r, 404)
    r = await projections.client.get(
        f"/v1/cycles/{p.cycle_id}/okrs", params={"as_of": "2027-01-01T00:00:00"}
    )
    assert_problem(r, 422)  # a moment needs its time zone


# --- the audit trail ----------------------------------------------------------------------


async def test_every_change_is_in_the_audit_trail_with_from_to_and_reason(
    goals: RunningService, checkins: RunningService, projections: RunningService
) -> None:
    p = await plan(goals, checkins, start=0, target=50)
    r = await goals.client.post(
        f"/v1/key-results/{p.key_result_id}/target", json={"target": 80, "reason": "stretch"}
    )
    assert r.status_code == 200
    first = await check_in(checkins.client, p.key_result_id, value=10, confidence=6)
    r = await checkins.client.post(
        f"/v1/check-ins/{first}/correct", json={"confidence": 4, "reason": "vendor slipped"}
    )
    assert r.status_code == 200
    page = await read(projections, "/v1/audit", goals, checkins, entity=p.key_result_id)
    by_type = {e["event_type"]: e for e in page["items"]}
    adjusted = by_type["okr.goals.key_result.target_adjusted"]
    assert adjusted["changes"] == {"target": {"from": 50.0, "to": 80.0}}
    assert adjusted["reason"] == "stretch" and adjusted["actor"] == "alice"
    assert adjusted["service"] == "goals" and adjusted["entity_id"] == p.key_result_id
    defined = by_type["okr.goals.key_result.defined"]
    assert defined["changes"]["target"] == {"from": None, "to": 50.0}
    checked = by_type["okr.checkins.key_result_progress.checked_in"]
    assert checked["changes"]["value"] == {"from": None, "to": 10.0}
    assert checked["related_id"] == p.key_result_id
    corrected = by_type["okr.checkins.key_result_progress.check_in_corrected"]
    assert corrected["changes"] == {"confidence": {"from": 6, "to": 4}}
    assert corrected["reason"] == "vendor slipped"
    assert all(e["correlation_id"] and e["causation_id"] for e in page["items"])


async def test_audit_filters_and_a_cursor_that_stays_stable(
    goals: RunningService, checkins: RunningService, projections: RunningService
) -> None:
    p = await plan(goals, checkins)
    bob = httpx.AsyncClient(base_url=goals.base_url, headers=auth("bob"), timeout=20)
    for i in range(5):
        r = await bob.patch(f"/v1/key-results/{p.key_result_id}", json={"title": f"T{i}"})
        assert r.status_code == 200
    await bob.aclose()
    everything = await read(projections, "/v1/audit", goals, checkins, limit=500)
    assert len(everything["items"]) == 9  # 4 to plan, 5 retitles
    bobs = await read(projections, "/v1/audit", actor="bob")
    assert len(bobs["items"]) == 5
    assert all(e["event_type"] == "okr.goals.key_result.retitled" for e in bobs["items"])
    assert len((await read(projections, "/v1/audit", service="checkins"))["items"]) == 0
    typed = await read(projections, "/v1/audit", event_type="okr.goals.cycle.started")
    assert [e["entity_id"] for e in typed["items"]] == [p.cycle_id]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await read(projections, "/v1/audit", since=future))["items"] == []
    assert len((await read(projections, "/v1/audit", until=future))["items"]) == 9

    # Page through while new entries arrive: nothing skipped, nothing twice.
    first = await read(projections, "/v1/audit", limit=4)
    for i in range(3):
        r = await goals.client.patch(f"/v1/key-results/{p.key_result_id}", json={"title": f"N{i}"})
        assert r.status_code == 200
    await read(projections, "/v1/audit", goals)
    seen = [e["pos"] for e in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = await read(projections, "/v1/audit", limit=4, cursor=cursor)
        seen += [e["pos"] for e in page["items"]]
        cursor = page["next_cursor"]
    assert seen == [e["pos"] for e in everything["items"]]
    r = await projections.client.get("/v1/audit", params={"cursor": "bm9wZQ"})
    assert assert_problem(r, 422)["errors"][0]["field"] == "cursor"


async def test_audit_exports_as_csv(
    goals: RunningService, checkins: RunningService, projections: RunningService
) -> None:
    p = await plan(goals, checkins)
    r = await goals.client.patch(
        f"/v1/key-results/{p.key_result_id}", json={"title": "=HYPERLINK(1)", "reason": "@x"}
    )
    assert r.status_code == 200
    r = await projections.client.get(
        "/v1/audit.csv", params={"min_position": await positions(goals), "entity": p.key_result_id}
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["event_type"] for row in rows] == [
        "okr.goals.key_result.defined",
        "okr.goals.key_result.retitled",
    ]
    assert rows[1]["reason"] == "'@x"  # no formula when opened in a spreadsheet
    assert '"=HYPERLINK(1)"' in rows[1]["changes"]


# --- other views --------------------------------------------------------------------------


async def test_check_in_history_overdue_and_meetings(
    goals: RunningService, checkins: RunningService, projections: RunningService
) -> None:
    p = await plan(goals, checkins)
    idle = await add_key_result(goals.client, p.objective_id, title="Idle")
    await check_in(checkins.client, p.key_result_id, value=25, confidence=8)
    await check_in(checkins.client, p.key_result_id, value=30, confidence=6)
    history = await read(
        projections, f"/v1/key-results/{p.key_result_id}/check-ins", goals, checkins
    )
    assert [c["value"] for c in history["items"]] == [25, 30]
    assert [t["confidence"] for t in history["trend"]] == [8, 6]
    overdue = await read(projections, f"/v1/cycles/{p.cycle_id}/overdue-check-ins")
    assert [o["key_result_id"] for o in overdue["items"]] == [idle]
    assert overdue["cadence_days"] == 7

    today = datetime.now(UTC).date().isoformat()
    r = await goals.client.post(
        "/v1/cycles",
        json={"name": "Now", "starts_on": today, "ends_on": "2099-01-01"},
    )
    cycle_now = r.json()["id"]
    await goals.client.post(f"/v1/cycles/{cycle_now}/start")
    await create_objective(goals.client, cycle_now, team="platform")
    r = await checkins.client.post(
        "/v1/teams/platform/check-in-meetings",
        params={"min_position": await positions(goals)},
        json={
            "cycle_id": cycle_now,
            "held_on": today,
            "wins": ["Shipped the importer: pairing found the real issue"],
            "learnings": ["Smaller PRs"],
        },
    )
    assert r.status_code == 201, r.text
    meetings = await read(projections, "/v1/teams/platform/check-in-meetings", checkins)
    assert [m["wins"] for m in meetings["items"]] == [
        ["Shipped the importer: pairing found the real issue"]
    ]
    found = await read(projections, "/v1/search", q="PAIRING")
    assert [(h["source"], h["kind"], h["team"]) for h in found["items"]] == [
        ("meeting", "wins", "platform")
    ]
    assert (await read(projections, "/v1/search", q="smaller"))["items"][0]["kind"] == "learnings"
    assert (await read(projections, "/v1/search", q="nothing like it"))["items"] == []
    assert_problem(await projections.client.get("/v1/search", params={"q": "x"}), 422)


async def test_min_position_that_never_arrives_is_a_retryable_409(
    goals: RunningService, checkins: RunningService, projections: RunningService
) -> None:
    projections.runtime.settings.read_wait_timeout_s = 0.3
    r = await projections.client.get("/v1/audit", params={"min_position": "goals:999999"})
    problem = assert_problem(r, 409)
    assert problem["type"].endswith("/not-yet-known") and r.headers["retry-after"] == "1"
    r = await projections.client.get("/v1/audit", params={"min_position": "goals:x"})
    assert_problem(r, 422)


async def test_min_position_past_an_event_still_to_come_is_a_409_that_says_so(
    goals: RunningService, checkins: RunningService, projections: RunningService
) -> None:
    await plan(goals, checkins)
    await read(projections, "/v1/audit", goals, checkins)
    (views,) = [c for c in projections.runtime.consumers if c.name == "views"]
    at = views.positions["okr/goals"]
    projections.runtime.settings.read_wait_timeout_s = 0.3
    # The first goals event was handed back, to come again (at a stream sequence past the
    # acknowledgement floor, which is what a message still to come has).
    views._owed = {"okr/goals": {1: 10**9}}
    r = await projections.client.get("/v1/audit", params={"min_position": f"goals:{at}"})
    problem = assert_problem(r, 409)
    assert f"it is at goals:{at}, with earlier events still to come" in problem["detail"]
    views._owed = {}
    r = await projections.client.get("/v1/audit", params={"min_position": f"goals:{at}"})
    assert r.status_code == 200


async def test_metrics_show_apply_rate_and_lag_per_source(
    goals: RunningService, checkins: RunningService, projections: RunningService
) -> None:
    p = await plan(goals, checkins)
    await check_in(checkins.client, p.key_result_id, value=5)
    await read(projections, "/v1/audit", goals, checkins)
    text = (await projections.client.get("/metrics")).text
    labels = 'consumer="views",service="projections"'
    applied = [
        line
        for line in text.splitlines()
        if line.startswith(f"okr_consumer_applied_total{{{labels}}}")
    ]
    assert applied and float(applied[0].split()[-1]) >= 6
    for source in ("okr/goals", "okr/checkins"):
        assert f'okr_consumer_lag_events{{{labels},source="{source}"}}' in text
        assert f'okr_consumer_lag_seconds{{{labels},source="{source}"}}' in text
    assert (
        f"okr_consumer_failures_total{{{labels}}}" in text or "okr_consumer_failures_total" in text
    )

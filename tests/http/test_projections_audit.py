"""An audit entry, with what changed from what to what and why, for every kind of change the
goals, checkins and reviews services make."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.http.checkins_helpers import caught_up, check_in, plan
from tests.http.helpers import add_key_result, create_cycle, create_objective
from tests.http.reviews_helpers import synced
from tests.support import RunningService

EVERY_KIND = {
    "okr.goals.cycle.scheduled",
    "okr.goals.cycle.started",
    "okr.goals.cycle.closed",
    "okr.goals.objective.created",
    "okr.goals.objective.retitled",
    "okr.goals.objective.described",
    "okr.goals.objective.owner_changed",
    "okr.goals.objective.team_changed",
    "okr.goals.objective.realigned",
    "okr.goals.objective.archived",
    "okr.goals.objective.carried_over",
    "okr.goals.key_result.defined",
    "okr.goals.key_result.target_adjusted",
    "okr.goals.key_result.retitled",
    "okr.goals.key_result.owner_changed",
    "okr.goals.key_result.reweighted",
    "okr.goals.key_result.removed",
    "okr.goals.key_result.carried_over",
    "okr.checkins.key_result_progress.opened",
    "okr.checkins.key_result_progress.checked_in",
    "okr.checkins.key_result_progress.check_in_corrected",
    "okr.checkins.team_check_in.held",
    "okr.checkins.team_check_in.amended",
    "okr.reviews.cycle_review.opened",
    "okr.reviews.cycle_review.scored",
    "okr.reviews.cycle_review.reflected",
    "okr.reviews.cycle_review.carry_over_decided",
    "okr.reviews.cycle_review.finalised",
}


async def ok(call: Awaitable[Any], status: int = 200) -> Any:
    r = await call
    assert r.status_code == status, r.text
    return r.json()


async def test_every_kind_of_change_has_an_audit_entry(
    goals: RunningService,
    checkins: RunningService,
    reviews: RunningService,
    projections: RunningService,
) -> None:
    today = datetime.now(UTC).date()
    g, c, rv = goals.client, checkins.client, reviews.client
    p = await plan(goals, checkins, start=0, target=50)
    parent = await create_objective(g, p.cycle_id, title="Company goal", team="leadership")
    await ok(
        g.patch(
            f"/v1/objectives/{p.objective_id}",
            json={
                "title": "Delight customers sooner",
                "description": "Faster answers",
                "owner": "carol",
                "reason": "new owner after the reorg",
            },
        )
    )
    await ok(g.patch(f"/v1/objectives/{p.objective_id}", json={"parent_id": parent}))
    await ok(g.patch(f"/v1/objectives/{parent}", json={"team": "exec", "reason": "renamed"}))
    spare = await create_objective(g, p.cycle_id, title="Spare", team="platform")
    await ok(g.post(f"/v1/objectives/{spare}/archive", json={"reason": "merged"}))
    await ok(
        g.post(
            f"/v1/key-results/{p.key_result_id}/target", json={"target": 80, "reason": "stretch"}
        )
    )
    await ok(
        g.patch(
            f"/v1/key-results/{p.key_result_id}",
            json={"title": "NPS 80", "owner": "dan", "weight": 3, "reason": "rebalanced"},
        )
    )
    gone = await add_key_result(g, p.objective_id, title="Gone")
    await ok(g.post(f"/v1/key-results/{gone}/remove", json={"reason": "no data source"}))

    await synced(reviews, goals, checkins)
    first = await check_in(c, p.key_result_id, value=10, confidence=6)
    await ok(c.post(f"/v1/check-ins/{first}/correct", json={"value": 12, "reason": "recount"}))
    now_cycle = await create_cycle(
        g,
        name="Now",
        starts_on=(today - timedelta(days=10)).isoformat(),
        ends_on=(today + timedelta(days=60)).isoformat(),
    )
    await create_objective(g, now_cycle, team="platform")
    await synced(reviews, goals, checkins)
    await caught_up(checkins, goals)  # the check-in service decides whether the cycle started
    meeting = await ok(
        c.post(
            "/v1/teams/platform/check-in-meetings",
            json={"cycle_id": now_cycle, "held_on": today.isoformat(), "wins": ["Shipped"]},
        ),
        201,
    )
    await ok(
        c.patch(
            f"/v1/check-in-meetings/{meeting['id']}",
            json={"learnings": ["Pair more"], "reason": "added after the meeting"},
        )
    )

    nxt = await create_cycle(g, start=False, name="Next")
    await synced(reviews, goals, checkins)
    review = (
        await ok(rv.post("/v1/reviews", json={"cycle_id": p.cycle_id, "team": "platform"}), 201)
    )["id"]
    await ok(
        rv.put(
            f"/v1/reviews/{review}/scores/{p.key_result_id}",
            json={"score": 0.3, "comment": "late start"},
        )
    )
    await ok(rv.post(f"/v1/reviews/{review}/reflections", json={"kind": "learned", "text": "X"}))
    await ok(
        rv.post(
            f"/v1/reviews/{review}/carry-over",
            json={"objective_id": p.objective_id, "decision": "carry_over", "next_cycle_id": nxt},
        )
    )
    await ok(rv.post(f"/v1/reviews/{review}/finalise"))
    await ok(g.post(f"/v1/cycles/{p.cycle_id}/close", json={"reason": "quarter over"}))

    # Wait for the carry-over (made by the goals service from the reviews events) to be seen.
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        page = await ok(projections.client.get("/v1/audit", params={"limit": 500}))
        kinds = {e["event_type"] for e in page["items"]}
        if EVERY_KIND <= kinds:
            break
        assert asyncio.get_running_loop().time() < deadline, EVERY_KIND - kinds
        await asyncio.sleep(0.2)

    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in page["items"]:
        by_type.setdefault(entry["event_type"], []).append(entry)
    for kind in EVERY_KIND:
        for entry in by_type[kind]:
            assert entry["changes"], (kind, entry)
            assert entry["actor"] == "alice" and entry["at"] and entry["correlation_id"]
            for change in entry["changes"].values():
                assert change["from"] != change["to"], (kind, change)

    def one(kind: str, entity: str) -> dict[str, Any]:
        [entry] = [e for e in by_type[kind] if e["entity_id"] == entity]
        return entry

    retitled = one("okr.goals.objective.retitled", p.objective_id)
    assert retitled["changes"] == {
        "title": {"from": "Delight our customers", "to": "Delight customers sooner"}
    }
    assert retitled["reason"] == "new owner after the reorg"
    realigned = one("okr.goals.objective.realigned", p.objective_id)
    assert realigned["changes"] == {"parent_id": {"from": None, "to": parent}}
    assert one("okr.goals.objective.archived", spare)["reason"] == "merged"
    reweighted = one("okr.goals.key_result.reweighted", p.key_result_id)
    assert reweighted["changes"] == {"weight": {"from": 2.0, "to": 3.0}}
    assert reweighted["reason"] == "rebalanced"
    assert one("okr.goals.key_result.removed", gone)["reason"] == "no data source"
    closed = one("okr.goals.cycle.closed", p.cycle_id)
    assert closed["changes"] == {"status": {"from": "active", "to": "closed"}}
    amended = one("okr.checkins.team_check_in.amended", meeting["id"])
    assert amended["changes"] == {"learnings": {"from": [], "to": ["Pair more"]}}
    scored = one("okr.reviews.cycle_review.scored", review)
    assert scored["changes"]["score"] == {"from": None, "to": 0.3}
    decided = one("okr.reviews.cycle_review.carry_over_decided", review)
    assert decided["changes"]["decision"] == {"from": None, "to": "carry_over"}

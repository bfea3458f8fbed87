"""What the board lists from the projections: every cycle, with the moment from which its tree
exists (the start of the time slider), and the reviews of a cycle, one per team."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.http.helpers import anonymous, assert_problem, create_cycle
from tests.http.reviews_helpers import reviewed
from tests.http.test_projections import positions, read
from tests.support import RunningService

UNKNOWN = "8b0c1f55-8e0e-4c43-9f0e-3c1f7e2b9a11"


async def test_cycles_are_listed_latest_first_from_when_they_were_recorded(
    goals: RunningService, checkins: RunningService, projections: RunningService
) -> None:
    first = await create_cycle(goals.client, name="2027 Q1")
    second = await create_cycle(
        goals.client, start=False, name="2027 Q2", starts_on="2027-04-01", ends_on="2027-06-30"
    )
    items = (await read(projections, "/v1/cycles", goals))["items"]
    assert [(c["id"], c["name"], c["status"]) for c in items] == [
        (second, "2027 Q2", "scheduled"),
        (first, "2027 Q1", "active"),
    ]
    assert items[1] | {"recorded_at": None} == {
        "id": first,
        "name": "2027 Q1",
        "starts_on": "2027-01-01",
        "ends_on": "2027-03-31",
        "status": "active",
        "recorded_at": None,
    }
    # The tree exists from `recorded_at` on, and not a microsecond before.
    recorded = datetime.fromisoformat(items[1]["recorded_at"])
    path = f"/v1/cycles/{first}/okrs"
    assert (await read(projections, path, as_of=recorded.isoformat()))["cycle"]["id"] == first
    before = (recorded - timedelta(microseconds=1)).isoformat()
    assert_problem(await projections.client.get(path, params={"as_of": before}), 404)


async def test_a_cycle_lists_the_reviews_of_its_teams(
    goals: RunningService,
    checkins: RunningService,
    reviews: RunningService,
    projections: RunningService,
) -> None:
    p, review_id = await reviewed(goals, checkins, reviews)
    other = await create_cycle(goals.client, name="Elsewhere")
    listed = await read(projections, f"/v1/cycles/{p.cycle_id}/reviews", reviews, goals)
    assert listed == {
        "cycle_id": p.cycle_id,
        "items": [{"id": review_id, "team": "platform", "status": "open"}],
    }
    decide = {"objective_id": p.objective_id, "decision": "done"}
    r = await reviews.client.post(f"/v1/reviews/{review_id}/carry-over", json=decide)
    assert r.status_code == 200, r.text
    r = await reviews.client.post(f"/v1/reviews/{review_id}/finalise")
    assert r.status_code == 200, r.text
    listed = await read(projections, f"/v1/cycles/{p.cycle_id}/reviews", reviews)
    assert listed["items"][0]["status"] == "final"
    assert (await read(projections, f"/v1/cycles/{other}/reviews", goals))["items"] == []
    r = await projections.client.get(
        f"/v1/cycles/{UNKNOWN}/reviews", params={"min_position": await positions(goals)}
    )
    assert_problem(r, 404)


async def test_the_lists_need_a_token(projections: RunningService) -> None:
    async with anonymous(projections) as client:
        for path in ("/v1/cycles", f"/v1/cycles/{UNKNOWN}/reviews"):
            assert_problem(await client.get(path), 401)

"""The review service's rules over HTTP: what a review covers and suggests, scores beside
suggestions, decisions, finalisation, and the read-only review after it."""

from __future__ import annotations

from tests.http.checkins_helpers import caught_up, check_in, plan
from tests.http.helpers import (
    add_key_result,
    archive_objective,
    assert_problem,
    close_cycle,
    create_cycle,
    create_objective,
    remove_key_result,
    stored,
)
from tests.http.reviews_helpers import open_review, reviewed, synced
from tests.support import RunningService

UNKNOWN = "8b0c1f55-8e0e-4c43-9f0e-3c1f7e2b9a11"


# --- opening ------------------------------------------------------------------------------


async def test_a_review_covers_the_teams_live_key_results_with_suggestions(
    goals: RunningService, checkins: RunningService, reviews: RunningService
) -> None:
    p = await plan(goals, checkins, start=0, target=50)
    decreasing = await add_key_result(
        goals.client, p.objective_id, title="Churn", start=10, target=2
    )
    gone = await add_key_result(goals.client, p.objective_id, title="Dropped")
    await remove_key_result(goals.client, gone)
    archived = await create_objective(goals.client, p.cycle_id, team="platform", title="Old")
    await archive_objective(goals.client, archived)
    other_team = await create_objective(goals.client, p.cycle_id, team="data")
    await add_key_result(goals.client, other_team)
    await caught_up(checkins, goals)

    first = await check_in(checkins.client, p.key_result_id, value=10)
    r = await checkins.client.post(
        f"/v1/check-ins/{first}/correct", json={"value": 22, "reason": "miscounted"}
    )
    assert r.status_code == 200
    await check_in(checkins.client, decreasing, value=6)
    await synced(reviews, goals, checkins)

    r = await open_review(reviews, p.cycle_id)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v1/reviews/{r.json()['id']}"
    body = (await reviews.client.get(f"/v1/reviews/{r.json()['id']}")).json()
    assert body["status"] == "open" and body["team"] == "platform"
    assert [o["objective_id"] for o in body["objectives"]] == [p.objective_id]
    by_id = {k["key_result_id"]: k for k in body["key_results"]}
    assert set(by_id) == {p.key_result_id, decreasing}
    # The latest check-in, as corrected: 22 of 0→50 is 0.44, suggested 0.4.
    assert by_id[p.key_result_id]["last_value"] == 22
    assert by_id[p.key_result_id]["progress"] == 0.44
    assert by_id[p.key_result_id]["suggested_score"] == 0.4
    # A decreasing target: 10 → 2, now 6: half-way.
    assert by_id[decreasing]["suggested_score"] == 0.5
    same = await reviews.client.get(f"/v1/cycles/{p.cycle_id}/teams/platform/review")
    assert same.json() == body


async def test_opening_rules(
    goals: RunningService, checkins: RunningService, reviews: RunningService
) -> None:
    p = await plan(goals, checkins)
    scheduled = await create_cycle(goals.client, start=False, name="Later")
    await create_objective(goals.client, scheduled, team="platform")
    await synced(reviews, goals, checkins)
    assert_problem(await open_review(reviews, UNKNOWN), 404)
    assert "has not started" in assert_problem(await open_review(reviews, scheduled), 409)["detail"]
    assert (
        "no objectives"
        in assert_problem(await open_review(reviews, p.cycle_id, "nobody"), 409)["detail"]
    )
    assert (await open_review(reviews, p.cycle_id)).status_code == 201
    before = await stored(reviews)
    assert (
        "already has a review"
        in assert_problem(await open_review(reviews, p.cycle_id), 409)["detail"]
    )
    assert await stored(reviews) == before
    assert_problem(await reviews.client.get(f"/v1/reviews/{UNKNOWN}"), 404)
    assert_problem(await reviews.client.get(f"/v1/cycles/{p.cycle_id}/teams/nobody/review"), 404)


async def test_a_review_of_a_cycle_just_created_waits_with_min_position(
    goals: RunningService, checkins: RunningService, reviews: RunningService
) -> None:
    cycle_id = await create_cycle(goals.client)
    r = await goals.client.post(
        "/v1/objectives",
        json={"cycle_id": cycle_id, "title": "T", "owner": "o", "team": "platform"},
    )
    position = r.json()["position"]
    r = await reviews.client.post(
        "/v1/reviews",
        params={"min_position": position},
        json={"cycle_id": cycle_id, "team": "platform"},
    )
    assert r.status_code == 201, r.text


# --- scores, decisions, finalising --------------------------------------------------------


async def test_scores_beside_suggestions(
    goals: RunningService, checkins: RunningService, reviews: RunningService
) -> None:
    p, review_id = await reviewed(goals, checkins, reviews)
    url = f"/v1/reviews/{review_id}/scores/{p.key_result_id}"
    before = await stored(reviews)
    r = await reviews.client.put(url, json={"score": 0.6})
    assert assert_problem(r, 422)["errors"][0]["field"] == "comment"
    assert_problem(await reviews.client.put(url, json={"score": 1.5, "comment": "x"}), 422)
    assert_problem(
        await reviews.client.put(f"/v1/reviews/{review_id}/scores/{UNKNOWN}", json={"score": 0.4}),
        404,
    )
    assert await stored(reviews) == before
    assert (await reviews.client.put(url, json={"score": 0.4})).status_code == 200
    r = await reviews.client.put(url, json={"score": 0.6, "comment": "the launch landed late"})
    assert r.status_code == 200
    kr = (await reviews.client.get(f"/v1/reviews/{review_id}")).json()["key_results"][0]
    assert (kr["score"], kr["suggested_score"], kr["comment"]) == (
        0.6,
        0.4,
        "the launch landed late",
    )


async def test_decisions_and_finalising(
    goals: RunningService, checkins: RunningService, reviews: RunningService
) -> None:
    p, review_id = await reviewed(goals, checkins, reviews)
    decide = f"/v1/reviews/{review_id}/carry-over"
    closed = await create_cycle(goals.client, name="Closed")
    await close_cycle(goals.client, closed)
    await synced(reviews, goals, checkins)
    before = await stored(reviews)

    r = await reviews.client.post(
        decide, json={"objective_id": p.objective_id, "decision": "carry_over"}
    )
    assert assert_problem(r, 422)["errors"][0]["field"] == "next_cycle_id"
    r = await reviews.client.post(
        decide,
        json={"objective_id": p.objective_id, "decision": "carry_over", "next_cycle_id": UNKNOWN},
    )
    assert_problem(r, 404)
    r = await reviews.client.post(
        decide,
        json={"objective_id": p.objective_id, "decision": "carry_over", "next_cycle_id": closed},
    )
    assert "closed" in assert_problem(r, 409)["detail"]
    r = await reviews.client.post(decide, json={"objective_id": UNKNOWN, "decision": "done"})
    assert_problem(r, 404)
    r = await reviews.client.post(f"/v1/reviews/{review_id}/finalise")
    assert "undecided" in assert_problem(r, 409)["detail"]
    assert await stored(reviews) == before

    r = await reviews.client.post(decide, json={"objective_id": p.objective_id, "decision": "done"})
    assert r.status_code == 200
    r = await reviews.client.post(
        f"/v1/reviews/{review_id}/reflections", json={"kind": "went_well", "text": "Pairing"}
    )
    assert r.status_code == 200 and r.json()["reflection_id"]
    assert (await reviews.client.post(f"/v1/reviews/{review_id}/finalise")).status_code == 200
    body = (await reviews.client.get(f"/v1/reviews/{review_id}")).json()
    assert body["status"] == "final"
    assert body["objectives"][0]["carried_objective_id"] is None  # done, not carried

    final = await stored(reviews)
    for method, url, payload in [
        ("PUT", f"/v1/reviews/{review_id}/scores/{p.key_result_id}", {"score": 0.4}),
        ("POST", f"/v1/reviews/{review_id}/reflections", {"kind": "learned", "text": "late"}),
        ("POST", decide, {"objective_id": p.objective_id, "decision": "drop"}),
        ("POST", f"/v1/reviews/{review_id}/finalise", None),
    ]:
        r = await reviews.client.request(method, url, json=payload)
        assert "final" in assert_problem(r, 409)["detail"], (method, url)
    assert await stored(reviews) == final

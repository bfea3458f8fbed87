"""Idempotency-Key and If-Match on the review service: a retry answers the first answer and
records nothing twice (also concurrently, and within one writer batch); keys belong to their
actor; If-Match guards the review, finalising included.

The cases share one set of running services per store (a module fixture); each plans a cycle
of its own and counts what the review service stores before and after.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.http.checkins_helpers import Plan, caught_up, check_in, plan
from tests.http.helpers import (
    add_key_result,
    assert_problem,
    assert_replay,
    create_objective,
    etag,
    stored,
    writer_paused,
)
from tests.http.reviews_helpers import synced
from tests.support import RunningService, auth
from tests.system import STORES, running, store_for


@dataclass
class World:
    goals: RunningService
    checkins: RunningService
    reviews: RunningService


@pytest.fixture(scope="module", params=STORES)
async def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    base = tmp_path_factory.mktemp("reviews-idempotency")
    async with running(store_for(request, base), base, "goals", "checkins", "reviews") as s:
        yield World(s["goals"], s["checkins"], s["reviews"])


@dataclass
class Planned:
    plan: Plan  # platform's objective and its key result: 0 -> 100, checked in at 40
    other_kr: str  # a second key result of platform's objective, never checked in
    data_objective: str  # teams data and design have an objective too


async def planned(world: World) -> Planned:
    """A cycle of its own, started, that platform, data and design can review."""
    p = await plan(world.goals, world.checkins, start=0, target=100)
    other_kr = await add_key_result(world.goals.client, p.objective_id, title="Other")
    data_objective = await create_objective(world.goals.client, p.cycle_id, team="data")
    await create_objective(world.goals.client, p.cycle_id, team="design")
    await caught_up(world.checkins, world.goals)
    await check_in(world.checkins.client, p.key_result_id, value=40)
    await synced(world.reviews, world.goals, world.checkins)
    return Planned(p, other_kr, data_objective)


async def opened(world: World, cycle_id: str, team: str = "platform") -> str:
    r = await world.reviews.client.post("/v1/reviews", json={"cycle_id": cycle_id, "team": team})
    assert r.status_code == 201, r.text
    review_id: str = r.json()["id"]
    return review_id


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"key-{uuid.uuid4()}"}


async def read(world: World, review_id: str) -> dict[str, Any]:
    r = await world.reviews.client.get(f"/v1/reviews/{review_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert r.headers["etag"] == etag(body["version"])
    return body


def assert_answer(r: httpx.Response, status: int, version: int, position: int) -> dict[str, Any]:
    """A command answer of the review service, and its ETag."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["version"] == version, body
    assert body["position"] == f"reviews:{position}", body
    assert r.headers["etag"] == etag(version)
    return body


# --- retries ------------------------------------------------------------------------------


async def test_retried_commands_answer_the_first_answer(world):
    p = (await planned(world)).plan
    client = world.reviews.client
    start = await stored(world.reviews)

    # Opening: the retry would otherwise be refused, the team having its review already.
    headers = key()
    body = {"cycle_id": p.cycle_id, "team": "platform"}
    first = await client.post("/v1/reviews", json=body, headers=headers)
    review_id = assert_answer(first, 201, 1, start + 1)["id"]
    assert "idempotent-replayed" not in first.headers
    assert first.headers["location"] == f"/v1/reviews/{review_id}"
    retry = await client.post("/v1/reviews", json=body, headers=headers)
    assert_replay(retry, first)
    assert_problem(await client.post("/v1/reviews", json=body), 409)
    assert await stored(world.reviews) == start + 1

    # A score: the retry would otherwise answer "nothing changed" (position null).
    path = f"/v1/reviews/{review_id}/scores/{p.key_result_id}"
    score = {"score": 0.6, "comment": "landed late"}
    headers = key()
    first = await client.put(path, json=score, headers=headers)
    assert assert_answer(first, 200, 2, start + 2)["id"] == review_id
    assert "location" not in first.headers
    retry = await client.put(path, json=score, headers=headers)
    assert_replay(retry, first)
    assert await stored(world.reviews) == start + 2

    # A reflection: the retry would otherwise be a second reflection.
    path = f"/v1/reviews/{review_id}/reflections"
    reflection = {"kind": "learned", "text": "Smaller PRs merge faster"}
    headers = key()
    first = await client.post(path, json=reflection, headers=headers)
    answer = assert_answer(first, 200, 3, start + 3)
    assert set(answer) == {"id", "version", "position", "reflection_id"}
    retry = await client.post(path, json=reflection, headers=headers)
    assert_replay(retry, first)
    assert await stored(world.reviews) == start + 3
    assert [x["id"] for x in (await read(world, review_id))["reflections"]] == [
        answer["reflection_id"]
    ]

    # A decision: the retry would otherwise answer "nothing changed".
    path = f"/v1/reviews/{review_id}/carry-over"
    decided = {"objective_id": p.objective_id, "decision": "done"}
    headers = key()
    first = await client.post(path, json=decided, headers=headers)
    assert_answer(first, 200, 4, start + 4)
    retry = await client.post(path, json=decided, headers=headers)
    assert_replay(retry, first)
    assert await stored(world.reviews) == start + 4

    # Finalising: the retry would otherwise be refused, the review being final.
    path = f"/v1/reviews/{review_id}/finalise"
    headers = key()
    first = await client.post(path, headers=headers)
    assert_answer(first, 200, 5, start + 5)
    retry = await client.post(path, headers=headers)
    assert_replay(retry, first)
    assert "final" in assert_problem(await client.post(path), 409)["detail"]
    assert await stored(world.reviews) == start + 5
    review = await read(world, review_id)
    assert (review["version"], review["status"]) == (5, "final")


async def test_same_key_with_another_body_or_path_is_422(world):
    x = await planned(world)
    p = x.plan
    client = world.reviews.client
    review_id = await opened(world, p.cycle_id)
    data_review_id = await opened(world, p.cycle_id, "data")
    review, data_review = f"/v1/reviews/{review_id}", f"/v1/reviews/{data_review_id}"
    # (method, path, first body, then another path, another body), in an order that keeps
    # every first request acceptable.
    cases = [
        (
            "POST",
            "/v1/reviews",
            {"cycle_id": p.cycle_id, "team": "design"},
            "/v1/reviews",
            {"cycle_id": p.cycle_id, "team": "platform"},
        ),
        (
            "PUT",
            f"{review}/scores/{p.key_result_id}",
            {"score": 0.4},
            f"{review}/scores/{p.key_result_id}",
            {"score": 0.4, "comment": "as suggested"},
        ),
        (
            "PUT",
            f"{review}/scores/{p.key_result_id}",
            {"score": 0.5, "comment": "x"},
            f"{review}/scores/{x.other_kr}",
            {"score": 0.5, "comment": "x"},
        ),
        (
            "POST",
            f"{review}/reflections",
            {"kind": "learned", "text": "A"},
            f"{review}/reflections",
            {"kind": "learned", "text": "B"},
        ),
        (
            "POST",
            f"{review}/reflections",
            {"kind": "went_well", "text": "A"},
            f"{data_review}/reflections",
            {"kind": "went_well", "text": "A"},
        ),
        (
            "POST",
            f"{review}/carry-over",
            {"objective_id": p.objective_id, "decision": "done"},
            f"{review}/carry-over",
            {"objective_id": p.objective_id, "decision": "drop"},
        ),
        (
            "POST",
            f"{data_review}/carry-over",
            {"objective_id": x.data_objective, "decision": "drop"},
            f"{review}/carry-over",
            {"objective_id": x.data_objective, "decision": "drop"},
        ),
        ("POST", f"{review}/finalise", None, f"{data_review}/finalise", None),
    ]
    for method, path, body, other_path, other_body in cases:
        headers = key()
        first = await client.request(method, path, json=body, headers=headers)
        assert first.status_code in (200, 201), first.text
        before = await stored(world.reviews)
        r = await client.request(method, other_path, json=other_body, headers=headers)
        problem = assert_problem(r, 422)
        assert problem["type"].endswith("idempotency-key-reused"), problem
        assert "Idempotency-Key" in problem["detail"]
        assert await stored(world.reviews) == before
        # The first request's retry is still answered.
        retry = await client.request(method, path, json=body, headers=headers)
        assert_replay(retry, first)
    # None of the other requests did anything.
    scores = {k["key_result_id"]: k for k in (await read(world, review_id))["key_results"]}
    assert (scores[x.other_kr]["score"], scores[p.key_result_id]["score"]) == (None, 0.5)
    data = await read(world, data_review_id)
    assert (data["status"], data["reflections"]) == ("open", [])
    assert [o["decision"] for o in data["objectives"]] == ["drop"]
    r = await client.get(f"/v1/cycles/{p.cycle_id}/teams/design/review")
    assert r.status_code == 200, r.text


async def test_keys_belong_to_their_actor(world):
    p = (await planned(world)).plan
    client = world.reviews.client
    review_id = await opened(world, p.cycle_id)
    path = f"/v1/reviews/{review_id}/reflections"
    body = {"kind": "went_well", "text": "Pairing"}
    headers = key()
    before = await stored(world.reviews)
    alice = await client.post(path, json=body, headers=headers)
    assert_answer(alice, 200, 2, before + 1)
    bob = await client.post(path, json=body, headers={**headers, **auth("bob")})
    assert_answer(bob, 200, 3, before + 2)
    assert "idempotent-replayed" not in bob.headers
    assert bob.json()["reflection_id"] != alice.json()["reflection_id"]

    # Each one's retry answers their own first answer.
    again = await client.post(path, json=body, headers={**headers, **auth("bob")})
    assert_replay(again, bob)
    again = await client.post(path, json=body, headers=headers)
    assert_replay(again, alice)
    assert await stored(world.reviews) == before + 2
    reflections = (await read(world, review_id))["reflections"]
    assert [(x["id"], x["actor"]) for x in reflections] == [
        (alice.json()["reflection_id"], "alice"),
        (bob.json()["reflection_id"], "bob"),
    ]

    # Carol's key is hers even when its text is the same as alice's: another body is fine.
    r = await client.post(
        "/v1/reviews", json={"cycle_id": p.cycle_id, "team": "data"}, headers=headers
    )
    assert_problem(r, 422)  # alice's key, another request
    r = await client.post(
        "/v1/reviews",
        json={"cycle_id": p.cycle_id, "team": "data"},
        headers={**headers, **auth("carol")},
    )
    assert r.status_code == 201, r.text
    assert "idempotent-replayed" not in r.headers


async def test_refused_command_is_not_remembered(world):
    """A refused command stores no answer under its key: once fixed, the retry goes through."""
    p = (await planned(world)).plan
    client = world.reviews.client
    review_id = await opened(world, p.cycle_id)
    before = await stored(world.reviews)

    path = f"/v1/reviews/{review_id}/reflections"
    body = {"kind": "learned", "text": "Ship smaller"}
    headers = key()
    assert_problem(await client.post(path, json=body, headers={**headers, "If-Match": '"7"'}), 412)
    first = await client.post(path, json=body, headers={**headers, "If-Match": '"1"'})
    assert_answer(first, 200, 2, before + 1)
    assert "idempotent-replayed" not in first.headers
    assert_replay(await client.post(path, json=body, headers=headers), first)

    # Refused by a rule (nothing decided yet), then accepted once the rule holds.
    finalise = f"/v1/reviews/{review_id}/finalise"
    headers = key()
    assert (
        "undecided" in assert_problem(await client.post(finalise, headers=headers), 409)["detail"]
    )
    r = await client.post(
        f"/v1/reviews/{review_id}/carry-over",
        json={"objective_id": p.objective_id, "decision": "drop"},
    )
    assert_answer(r, 200, 3, before + 2)
    first = await client.post(finalise, headers=headers)
    assert_answer(first, 200, 4, before + 3)
    assert "idempotent-replayed" not in first.headers
    assert_replay(await client.post(finalise, headers=headers), first)
    assert await stored(world.reviews) == before + 3


# --- concurrency --------------------------------------------------------------------------


async def test_concurrent_identical_requests_store_once(world):
    x = await planned(world)
    p = x.plan
    client = world.reviews.client

    async def at_once(method: str, path: str, body: Any, status: int) -> list[httpx.Response]:
        headers = key()
        before = await stored(world.reviews)
        answers = await asyncio.gather(
            *(client.request(method, path, json=body, headers=headers) for _ in range(10))
        )
        assert [a.status_code for a in answers] == [status] * 10, [a.text for a in answers]
        assert all(a.json() == answers[0].json() for a in answers)
        assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 9
        assert answers[0].json()["position"] == f"reviews:{before + 1}"
        assert await stored(world.reviews) == before + 1
        return answers

    answers = await at_once(
        "POST", "/v1/reviews", {"cycle_id": p.cycle_id, "team": "platform"}, 201
    )
    review_id = answers[0].json()["id"]
    assert {a.headers["location"] for a in answers} == {f"/v1/reviews/{review_id}"}
    await at_once(
        "PUT",
        f"/v1/reviews/{review_id}/scores/{p.key_result_id}",
        {"score": 0.7, "comment": "better than it looks"},
        200,
    )
    await at_once(
        "POST", f"/v1/reviews/{review_id}/reflections", {"kind": "learned", "text": "Once"}, 200
    )
    await at_once(
        "POST",
        f"/v1/reviews/{review_id}/carry-over",
        {"objective_id": p.objective_id, "decision": "done"},
        200,
    )
    await at_once("POST", f"/v1/reviews/{review_id}/finalise", None, 200)
    review = await read(world, review_id)
    assert (review["version"], review["status"], len(review["reflections"])) == (5, "final", 1)

    # Without a key, opening at once: one review, the others refused.
    before = await stored(world.reviews)
    answers = await asyncio.gather(
        *(
            client.post("/v1/reviews", json={"cycle_id": p.cycle_id, "team": "data"})
            for _ in range(10)
        )
    )
    assert sorted(a.status_code for a in answers) == [201] + [409] * 9, [a.text for a in answers]
    assert await stored(world.reviews) == before + 1


async def test_identical_requests_in_one_writer_batch_store_once(world):
    """The same, with every request made to wait in one batch of the writer: the first runs,
    the others repeat its answer."""
    p = (await planned(world)).plan
    review_id = await opened(world, p.cycle_id)
    client = world.reviews.client
    path = f"/v1/reviews/{review_id}/reflections"
    body = {"kind": "do_more_of", "text": "Demos"}
    headers = key()
    before = await stored(world.reviews)
    async with writer_paused(world.reviews) as queued:
        sent = [
            asyncio.ensure_future(client.post(path, json=body, headers=headers)) for _ in range(5)
        ]
        await queued(5)
    answers = await asyncio.gather(*sent)
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    assert len({a.text for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 4
    assert await stored(world.reviews) == before + 1
    assert len((await read(world, review_id))["reflections"]) == 1


async def test_concurrent_requests_with_one_key_and_different_bodies(world):
    p = (await planned(world)).plan
    review_id = await opened(world, p.cycle_id)
    headers = key()
    before = await stored(world.reviews)
    path = f"/v1/reviews/{review_id}/reflections"
    answers = await asyncio.gather(
        *(
            world.reviews.client.post(
                path, json={"kind": "learned", "text": f"lesson {i}"}, headers=headers
            )
            for i in range(6)
        )
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [422] * 5, [a.text for a in answers]
    assert await stored(world.reviews) == before + 1
    assert len((await read(world, review_id))["reflections"]) == 1


async def test_concurrent_reflections_with_distinct_keys_all_apply(world):
    p = (await planned(world)).plan
    review_id = await opened(world, p.cycle_id)
    before = await stored(world.reviews)
    path = f"/v1/reviews/{review_id}/reflections"
    answers = await asyncio.gather(
        *(
            world.reviews.client.post(
                path, json={"kind": "went_well", "text": f"win {i}"}, headers=key()
            )
            for i in range(10)
        )
    )
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    assert len({a.json()["reflection_id"] for a in answers}) == 10
    assert sorted(a.json()["version"] for a in answers) == list(range(2, 12))
    assert await stored(world.reviews) == before + 10
    reflections = (await read(world, review_id))["reflections"]
    assert sorted(x["text"] for x in reflections) == sorted(f"win {i}" for i in range(10))
    assert {x["id"] for x in reflections} == {a.json()["reflection_id"] for a in answers}


# --- If-Match -----------------------------------------------------------------------------


async def test_if_match_guards_the_review(world):
    p = (await planned(world)).plan
    client = world.reviews.client
    review_id = await opened(world, p.cycle_id)
    review = f"/v1/reviews/{review_id}"
    score = f"{review}/scores/{p.key_result_id}"
    reflect = f"{review}/reflections"
    decide = f"{review}/carry-over"
    finalise = f"{review}/finalise"
    start = await stored(world.reviews)

    async def refused(method: str, url: str, body: Any, if_match: str, current: int) -> None:
        before = await stored(world.reviews)
        r = await client.request(method, url, json=body, headers={"If-Match": if_match})
        problem = assert_problem(r, 412)
        assert r.headers["etag"] == etag(current), r.headers
        assert str(current) in problem["detail"], problem
        assert await stored(world.reviews) == before

    await refused("PUT", score, {"score": 0.4}, '"0"', 1)
    await refused("PUT", score, {"score": 0.4}, '"2"', 1)
    r = await client.put(score, json={"score": 0.4}, headers={"If-Match": '"1"'})
    assert_answer(r, 200, 2, start + 1)
    # The same score again changes nothing, but a stale If-Match is still refused.
    await refused("PUT", score, {"score": 0.4}, '"1"', 2)
    r = await client.put(score, json={"score": 0.4}, headers={"If-Match": '"2"'})
    assert (r.status_code, r.json()["version"], r.json()["position"]) == (200, 2, None)

    await refused("POST", reflect, {"kind": "learned", "text": "x"}, '"1"', 2)
    r = await client.post(
        reflect, json={"kind": "learned", "text": "x"}, headers={"If-Match": 'W/"2"'}
    )
    assert_answer(r, 200, 3, start + 2)

    body = {"objective_id": p.objective_id, "decision": "done"}
    await refused("POST", decide, body, '"2"', 3)
    r = await client.post(decide, json=body, headers={"If-Match": "*"})
    assert_answer(r, 200, 4, start + 3)

    # Finalising: a stale or future version is refused, and the review stays open.
    await refused("POST", finalise, None, '"3"', 4)
    await refused("POST", finalise, None, '"5"', 4)
    assert (await read(world, review_id))["status"] == "open"
    r = await client.post(finalise, headers={"If-Match": '"4"'})
    assert_answer(r, 200, 5, start + 4)
    after = await read(world, review_id)
    assert (after["version"], after["status"]) == (5, "final")
    assert after["reflections"][0]["text"] == "x"
    # Once final, a matching If-Match does not make a change possible.
    r = await client.post(
        reflect, json={"kind": "learned", "text": "y"}, headers={"If-Match": '"5"'}
    )
    assert_problem(r, 409)
    await refused("POST", reflect, {"kind": "learned", "text": "y"}, '"4"', 5)
    assert await stored(world.reviews) == start + 4


async def test_if_match_on_opening_a_review_that_does_not_exist_is_412(world):
    p = (await planned(world)).plan
    before = await stored(world.reviews)
    r = await world.reviews.client.post(
        "/v1/reviews",
        json={"cycle_id": p.cycle_id, "team": "platform"},
        headers={"If-Match": '"3"'},
    )
    assert await stored(world.reviews) == before, r.text
    assert_problem(r, 412)

"""Idempotency-Key: a retry answers the first answer and records nothing twice — also under
concurrency and across a restart of the service."""

from __future__ import annotations

import asyncio
import uuid

from services.goals.main import create_app
from tests.http.helpers import (
    add_key_result,
    assert_answer,
    assert_problem,
    create_cycle,
    create_objective,
    cycle_body,
    get_json,
    key_result_body,
    objective_body,
    stored,
)
from tests.support import auth, serve


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"key-{uuid.uuid4()}"}


async def test_same_post_twice_answers_the_same(goals):
    headers = key()
    first = await goals.client.post("/v1/cycles", json=cycle_body(), headers=headers)
    assert_answer(first, 201, 1)
    assert "idempotent-replayed" not in first.headers
    assert await stored(goals) == 1

    second = await goals.client.post("/v1/cycles", json=cycle_body(), headers=headers)
    assert second.status_code == first.status_code == 201
    assert second.json() == first.json()
    assert second.json()["position"] == "goals:1"
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["etag"] == first.headers["etag"]
    assert second.headers["location"] == first.headers["location"]
    assert await stored(goals) == 1
    cycle = await get_json(goals.client, f"/v1/cycles/{first.json()['id']}")
    assert cycle["version"] == 1


async def test_retried_commands_on_existing_aggregates(goals):
    cycle_id = await create_cycle(goals.client, start=False)
    objective_id = await create_objective(goals.client, cycle_id)
    commands = [
        ("POST", f"/v1/cycles/{cycle_id}/start", None, f"/v1/cycles/{cycle_id}"),
        (
            "PATCH",
            f"/v1/objectives/{objective_id}",
            {"title": "Again"},
            f"/v1/objectives/{objective_id}",
        ),
        ("POST", f"/v1/objectives/{objective_id}/key-results", key_result_body(), None),
    ]
    for method, path, body, read in commands:
        headers = key()
        first = await goals.client.request(method, path, json=body, headers=headers)
        assert first.status_code in (200, 201), first.text
        after_first = await stored(goals)
        second = await goals.client.request(method, path, json=body, headers=headers)
        # Without the key, start and define would be refused (409) or doubled.
        assert (second.status_code, second.json()) == (first.status_code, first.json())
        assert second.headers["idempotent-replayed"] == "true"
        assert await stored(goals) == after_first
        read = read or f"/v1/key-results/{first.json()['id']}"
        assert (await get_json(goals.client, read))["version"] == first.json()["version"]


async def test_adjust_target_retry_is_not_a_rule_break(goals):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    key_result_id = await add_key_result(goals.client, objective_id)
    headers = key()
    path = f"/v1/key-results/{key_result_id}/target"
    body = {"target": 75, "reason": "stretch"}
    first = await goals.client.post(path, json=body, headers=headers)
    assert_answer(first, 200, 2)
    second = await goals.client.post(path, json=body, headers=headers)
    assert second.status_code == 200, second.text
    assert second.json() == first.json()
    # The same command without the key is a new command: the target is already 75.
    assert_problem(await goals.client.post(path, json=body), 409)


async def test_same_key_different_body_is_422(goals):
    headers = key()
    first = await goals.client.post("/v1/cycles", json=cycle_body(), headers=headers)
    assert first.status_code == 201
    r = await goals.client.post("/v1/cycles", json=cycle_body(name="Q2"), headers=headers)
    problem = assert_problem(r, 422)
    assert "Idempotency-Key" in problem["detail"]
    assert problem["type"].endswith("idempotency-key-reused")
    assert await stored(goals) == 1


async def test_same_key_different_path_is_422(goals):
    cycle_a = await create_cycle(goals.client, start=False)
    cycle_b = await create_cycle(goals.client, start=False)
    headers = key()
    assert (
        await goals.client.post(f"/v1/cycles/{cycle_a}/start", headers=headers)
    ).status_code == 200
    before = await stored(goals)
    r = await goals.client.post(f"/v1/cycles/{cycle_b}/start", headers=headers)
    assert_problem(r, 422)
    assert await stored(goals) == before
    assert (await get_json(goals.client, f"/v1/cycles/{cycle_b}"))["status"] == "scheduled"


async def test_same_key_from_another_actor_is_another_key(goals):
    headers = key()
    alice = await goals.client.post("/v1/cycles", json=cycle_body(), headers=headers)
    bob = await goals.client.post(
        "/v1/cycles", json=cycle_body(), headers={**headers, **auth("bob")}
    )
    assert alice.status_code == bob.status_code == 201
    assert "idempotent-replayed" not in bob.headers
    assert bob.json()["id"] != alice.json()["id"]
    assert bob.json()["position"] == "goals:2"
    assert await stored(goals) == 2
    # And each one's retry still answers its own first answer.
    again = await goals.client.post(
        "/v1/cycles", json=cycle_body(), headers={**headers, **auth("bob")}
    )
    assert again.json() == bob.json()
    assert await stored(goals) == 2


async def test_refused_command_is_not_remembered(goals):
    """A refused command stores no answer under its key: once fixed, the retry goes through."""
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    path = f"/v1/objectives/{objective_id}/archive"
    headers = key()
    before = await stored(goals)
    r = await goals.client.post(path, headers={**headers, "If-Match": '"7"'})
    assert_problem(r, 412)
    assert await stored(goals) == before
    r = await goals.client.post(path, headers={**headers, "If-Match": '"1"'})
    assert_answer(r, 200, 2)
    assert "idempotent-replayed" not in r.headers
    assert await stored(goals) == before + 1
    r = await goals.client.post(path, headers=headers)
    assert (r.status_code, r.headers["idempotent-replayed"]) == (200, "true")
    assert await stored(goals) == before + 1


async def test_retry_of_a_command_that_changed_nothing_answers_the_first_answer(goals):
    """A PATCH that repeats the current values records nothing and answers position null.
    Its retry must answer the same, even when the aggregate changed in between: the key's
    answer has to be remembered although the command stored no event."""
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id, title="Same")
    path = f"/v1/objectives/{objective_id}"
    headers = key()
    first = await goals.client.patch(path, json={"title": "Same"}, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json() == {"id": objective_id, "version": 1, "position": None}

    r = await goals.client.patch(path, json={"title": "Changed meanwhile"})
    assert_answer(r, 200, 2)
    before = await stored(goals)

    retry = await goals.client.patch(path, json={"title": "Same"}, headers=headers)
    assert retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    assert retry.headers.get("idempotent-replayed") == "true"
    assert await stored(goals) == before
    assert (await get_json(goals.client, path))["title"] == "Changed meanwhile"


async def test_concurrent_identical_requests_store_one_event(goals):
    headers = key()
    body = objective_body(await create_cycle(goals.client))
    before = await stored(goals)
    answers = await asyncio.gather(
        *(goals.client.post("/v1/objectives", json=body, headers=headers) for _ in range(10))
    )
    assert [a.status_code for a in answers] == [201] * 10, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len({a.json()["position"] for a in answers}) == 1
    assert all(a.json() == answers[0].json() for a in answers)
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 9
    assert await stored(goals) == before + 1
    assert answers[0].json()["position"] == f"goals:{before + 1}"
    objective = await get_json(goals.client, f"/v1/objectives/{answers[0].json()['id']}")
    assert objective["version"] == 1


async def test_concurrent_requests_with_one_key_and_different_bodies(goals):
    headers = key()
    cycle_id = await create_cycle(goals.client)
    before = await stored(goals)
    answers = await asyncio.gather(
        *(
            goals.client.post(
                "/v1/objectives", json=objective_body(cycle_id, title=f"T{i}"), headers=headers
            )
            for i in range(6)
        )
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] + [422] * 5, [a.text for a in answers]
    assert await stored(goals) == before + 1


async def test_concurrent_requests_with_distinct_keys_all_apply(goals):
    before = await stored(goals)
    answers = await asyncio.gather(
        *(goals.client.post("/v1/cycles", json=cycle_body(), headers=key()) for _ in range(10))
    )
    assert [a.status_code for a in answers] == [201] * 10
    assert len({a.json()["id"] for a in answers}) == 10
    assert len({a.json()["position"] for a in answers}) == 10
    assert await stored(goals) == before + 10


async def test_retry_after_restart_answers_the_same(goals_settings):
    headers = key()
    async with serve(create_app(goals_settings)) as svc:
        first = await svc.client.post("/v1/cycles", json=cycle_body(), headers=headers)
        assert_answer(first, 201, 1)
        cycle_id = first.json()["id"]
        started_headers = key()
        started = await svc.client.post(f"/v1/cycles/{cycle_id}/start", headers=started_headers)
        assert_answer(started, 200, 2)
        assert await stored(svc) == 2

    async with serve(create_app(goals_settings)) as svc:
        second = await svc.client.post("/v1/cycles", json=cycle_body(), headers=headers)
        assert second.status_code == 201
        assert (
            second.json()
            == first.json()
            == {
                "id": cycle_id,
                "version": 1,
                "position": "goals:1",
            }
        )
        assert second.headers["idempotent-replayed"] == "true"
        assert second.headers["location"] == f"/v1/cycles/{cycle_id}"

        again = await svc.client.post(f"/v1/cycles/{cycle_id}/start", headers=started_headers)
        assert (again.status_code, again.json()) == (200, started.json())
        assert again.headers["idempotent-replayed"] == "true"

        different = await svc.client.post("/v1/cycles", json=cycle_body(name="Q9"), headers=headers)
        assert_problem(different, 422)

        assert await stored(svc) == 2
        cycle = await get_json(svc.client, f"/v1/cycles/{cycle_id}")
        assert (cycle["version"], cycle["status"]) == (2, "active")

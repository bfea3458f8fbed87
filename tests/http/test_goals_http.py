"""Happy paths of every goals endpoint, through real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.http.helpers import (
    add_key_result,
    assert_answer,
    create_cycle,
    create_objective,
    cycle_body,
    etag,
    get_json,
    key_result_body,
    objective_body,
    position,
    stored,
)


async def test_cycle_schedule_start_close(goals):
    client = goals.client

    r = await client.post("/v1/cycles", json=cycle_body(name="  Q1 2027  "))
    created = assert_answer(r, 201, 1)
    cycle_id = created["id"]
    assert r.headers["location"] == f"/v1/cycles/{cycle_id}"
    assert created["position"] == position(await stored(goals)) == "goals:1"

    cycle = await get_json(client, f"/v1/cycles/{cycle_id}")
    assert cycle == {
        "id": cycle_id,
        "version": 1,
        "name": "Q1 2027",  # trimmed
        "starts_on": "2027-01-01",
        "ends_on": "2027-03-31",
        "status": "scheduled",
    }

    r = await client.post(f"/v1/cycles/{cycle_id}/start")
    started = assert_answer(r, 200, 2)
    assert started["id"] == cycle_id
    assert "location" not in r.headers
    assert started["position"] == "goals:2"
    assert (await get_json(client, f"/v1/cycles/{cycle_id}"))["status"] == "active"

    r = await client.post(f"/v1/cycles/{cycle_id}/close", json={"reason": "quarter over"})
    closed = assert_answer(r, 200, 3)
    assert closed["position"] == "goals:3"
    cycle = await get_json(client, f"/v1/cycles/{cycle_id}")
    assert (cycle["status"], cycle["version"]) == ("closed", 3)
    assert await stored(goals) == 3


async def test_close_without_body(goals):
    cycle_id = await create_cycle(goals.client)
    r = await goals.client.post(f"/v1/cycles/{cycle_id}/close")
    assert_answer(r, 200, 3)
    assert (await get_json(goals.client, f"/v1/cycles/{cycle_id}"))["status"] == "closed"


async def test_objective_create_revise_archive(goals):
    client = goals.client
    cycle_id = await create_cycle(client)
    parent_id = await create_objective(client, cycle_id, title="Company goal")
    before = await stored(goals)

    r = await client.post(
        "/v1/objectives", json=objective_body(cycle_id, title="Team goal", parent_id=parent_id)
    )
    created = assert_answer(r, 201, 1)
    objective_id = created["id"]
    assert r.headers["location"] == f"/v1/objectives/{objective_id}"
    assert created["position"] == position(before + 1)

    objective = await get_json(client, f"/v1/objectives/{objective_id}")
    assert objective == {
        "id": objective_id,
        "version": 1,
        "cycle_id": cycle_id,
        "title": "Team goal",
        "description": "Make the product a joy to use",
        "owner": "alice",
        "team": "platform",
        "parent_id": parent_id,
        "archived": False,
        "carried_from": None,
        "review_id": None,
        "lessons": [],
    }

    # Four fields at once: one event each, the position is the last one's.
    r = await client.patch(
        f"/v1/objectives/{objective_id}",
        json={
            "title": "Team goal, sharper",
            "description": "Fewer clicks",
            "owner": "carol",
            "team": "growth",
            "reason": "reorg",
        },
    )
    revised = assert_answer(r, 200, 5)
    assert revised["position"] == position(before + 5) == position(await stored(goals))
    objective = await get_json(client, f"/v1/objectives/{objective_id}")
    assert objective["title"] == "Team goal, sharper"
    assert objective["description"] == "Fewer clicks"
    assert objective["owner"] == "carol"
    assert objective["team"] == "growth"
    assert objective["version"] == 5

    # parent_id null detaches ...
    r = await client.patch(f"/v1/objectives/{objective_id}", json={"parent_id": None})
    assert_answer(r, 200, 6)
    assert (await get_json(client, f"/v1/objectives/{objective_id}"))["parent_id"] is None

    # ... and a parent id aligns again.
    r = await client.patch(
        f"/v1/objectives/{objective_id}", json={"parent_id": parent_id, "reason": "back"}
    )
    assert_answer(r, 200, 7)
    assert (await get_json(client, f"/v1/objectives/{objective_id}"))["parent_id"] == parent_id

    r = await client.post(f"/v1/objectives/{objective_id}/archive", json={"reason": "done"})
    assert_answer(r, 200, 8)
    objective = await get_json(client, f"/v1/objectives/{objective_id}")
    assert (objective["archived"], objective["version"]) == (True, 8)


async def test_archive_objective_without_body(goals):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    r = await goals.client.post(f"/v1/objectives/{objective_id}/archive")
    assert_answer(r, 200, 2)
    assert (await get_json(goals.client, f"/v1/objectives/{objective_id}"))["archived"] is True


async def test_patch_repeating_current_values_records_nothing(goals):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id, title="Same")
    before = await stored(goals)
    r = await goals.client.patch(f"/v1/objectives/{objective_id}", json={"title": "Same"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    assert r.json()["position"] is None
    assert await stored(goals) == before


async def test_key_result_define_revise_adjust_remove(goals):
    client = goals.client
    cycle_id = await create_cycle(client)
    objective_id = await create_objective(client, cycle_id)
    before = await stored(goals)

    r = await client.post(
        f"/v1/objectives/{objective_id}/key-results", json=key_result_body(title="Raise NPS")
    )
    created = assert_answer(r, 201, 1)
    key_result_id = created["id"]
    assert r.headers["location"] == f"/v1/key-results/{key_result_id}"
    assert created["position"] == position(before + 1)

    key_result = await get_json(client, f"/v1/key-results/{key_result_id}")
    assert key_result == {
        "id": key_result_id,
        "version": 1,
        "objective_id": objective_id,
        "cycle_id": cycle_id,
        "title": "Raise NPS",
        "kind": "number",
        "unit": "points",
        "start": 20.0,
        "target": 50.0,
        "weight": 2.0,
        "owner": "bob",
        "removed": False,
        "carried_from": None,
    }

    r = await client.patch(
        f"/v1/key-results/{key_result_id}",
        json={"title": "Raise NPS a lot", "owner": "dave", "weight": 3.5, "reason": "focus"},
    )
    revised = assert_answer(r, 200, 4)
    assert revised["position"] == position(before + 4)
    key_result = await get_json(client, f"/v1/key-results/{key_result_id}")
    assert (key_result["title"], key_result["owner"], key_result["weight"]) == (
        "Raise NPS a lot",
        "dave",
        3.5,
    )

    r = await client.post(
        f"/v1/key-results/{key_result_id}/target", json={"target": 60, "reason": "too easy"}
    )
    assert_answer(r, 200, 5)
    key_result = await get_json(client, f"/v1/key-results/{key_result_id}")
    assert (key_result["target"], key_result["version"]) == (60.0, 5)

    r = await client.post(
        f"/v1/key-results/{key_result_id}/remove", json={"reason": "cannot measure"}
    )
    removed = assert_answer(r, 200, 6)
    assert removed["position"] == position(await stored(goals))
    key_result = await get_json(client, f"/v1/key-results/{key_result_id}")
    assert (key_result["removed"], key_result["version"]) == (True, 6)


async def test_key_result_defaults_and_kinds(goals):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    body = key_result_body()
    del body["weight"]
    del body["unit"]
    r = await goals.client.post(f"/v1/objectives/{objective_id}/key-results", json=body)
    kr = await get_json(goals.client, f"/v1/key-results/{assert_answer(r, 201, 1)['id']}")
    assert (kr["weight"], kr["unit"]) == (1.0, "")

    # A decreasing target, a percent, a currency and a boolean are all fine.
    for overrides in (
        {"kind": "number", "start": 100, "target": 10},
        {"kind": "percent", "unit": "%", "start": 0, "target": 100},
        {"kind": "currency", "unit": "EUR", "start": 1000.5, "target": 25000},
        {"kind": "boolean", "unit": "", "start": 0, "target": 1},
    ):
        key_result_id = await add_key_result(goals.client, objective_id, **overrides)
        kr = await get_json(goals.client, f"/v1/key-results/{key_result_id}")
        assert kr["kind"] == overrides["kind"]
        assert (kr["start"], kr["target"]) == (overrides["start"], overrides["target"])


async def test_get_etag_tracks_version(goals):
    cycle_id = await create_cycle(goals.client, start=False)
    r = await goals.client.get(f"/v1/cycles/{cycle_id}")
    assert r.headers["etag"] == etag(1)
    await goals.client.post(f"/v1/cycles/{cycle_id}/start")
    r = await goals.client.get(f"/v1/cycles/{cycle_id}")
    assert r.headers["etag"] == etag(2) == etag(r.json()["version"])

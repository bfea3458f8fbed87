"""Rules broken by the current state answer 409 (404 for an unknown parent), and If-Match
guards against lost updates (412). Nothing is stored when refused."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.http.helpers import (
    add_key_result,
    archive_objective,
    assert_answer,
    assert_problem,
    close_cycle,
    create_cycle,
    create_objective,
    error_fields,
    etag,
    get_json,
    key_result_body,
    objective_body,
    remove_key_result,
    stored,
)


async def refused(goals, method: str, path: str, body=None, status: int = 409, headers=None):
    before = await stored(goals)
    r = await goals.client.request(method, path, json=body, headers=headers)
    problem = assert_problem(r, status)
    assert await stored(goals) == before
    return problem, r


# --- cycles -------------------------------------------------------------------------------


async def test_start_an_active_cycle(goals):
    cycle_id = await create_cycle(goals.client)
    problem, _ = await refused(goals, "POST", f"/v1/cycles/{cycle_id}/start")
    assert "active" in problem["detail"]
    assert (await get_json(goals.client, f"/v1/cycles/{cycle_id}"))["version"] == 2


async def test_start_a_closed_cycle(goals):
    cycle_id = await create_cycle(goals.client)
    await close_cycle(goals.client, cycle_id)
    await refused(goals, "POST", f"/v1/cycles/{cycle_id}/start")
    assert (await get_json(goals.client, f"/v1/cycles/{cycle_id}"))["status"] == "closed"


async def test_close_a_scheduled_cycle(goals):
    cycle_id = await create_cycle(goals.client, start=False)
    problem, _ = await refused(goals, "POST", f"/v1/cycles/{cycle_id}/close", {"reason": "x"})
    assert "scheduled" in problem["detail"]
    assert (await get_json(goals.client, f"/v1/cycles/{cycle_id}"))["status"] == "scheduled"


async def test_close_a_closed_cycle(goals):
    cycle_id = await create_cycle(goals.client)
    await close_cycle(goals.client, cycle_id)
    await refused(goals, "POST", f"/v1/cycles/{cycle_id}/close")


# --- a closed cycle -----------------------------------------------------------------------


@pytest.fixture
async def closed(goals):
    """A closed cycle with an objective and a key result made while it was active."""
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    key_result_id = await add_key_result(goals.client, objective_id)
    await close_cycle(goals.client, cycle_id)
    return cycle_id, objective_id, key_result_id


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param(
            "PATCH", "/v1/objectives/{o}", {"title": "Late change"}, id="revise objective"
        ),
        pytest.param("PATCH", "/v1/objectives/{o}", {"parent_id": None}, id="detach objective"),
        pytest.param("POST", "/v1/objectives/{o}/archive", {"reason": "x"}, id="archive objective"),
        pytest.param(
            "POST", "/v1/objectives/{o}/key-results", key_result_body(), id="define key result"
        ),
        pytest.param("PATCH", "/v1/key-results/{k}", {"weight": 5}, id="revise key result"),
        pytest.param(
            "POST", "/v1/key-results/{k}/target", {"target": 99, "reason": "x"}, id="adjust target"
        ),
        pytest.param("POST", "/v1/key-results/{k}/remove", {"reason": "x"}, id="remove key result"),
    ],
)
async def test_changes_in_a_closed_cycle(goals, closed, method, path, body):
    _, objective_id, key_result_id = closed
    problem, _ = await refused(goals, method, path.format(o=objective_id, k=key_result_id), body)
    assert problem["type"].endswith("rule-broken")
    objective = await get_json(goals.client, f"/v1/objectives/{objective_id}")
    assert (objective["version"], objective["archived"]) == (1, False)
    key_result = await get_json(goals.client, f"/v1/key-results/{key_result_id}")
    assert (key_result["version"], key_result["removed"]) == (1, False)


async def test_create_objective_in_a_closed_cycle(goals, closed):
    cycle_id, _, _ = closed
    problem, _ = await refused(goals, "POST", "/v1/objectives", objective_body(cycle_id))
    assert "closed" in problem["detail"]


async def test_create_objective_in_a_scheduled_cycle_is_fine(goals):
    cycle_id = await create_cycle(goals.client, start=False)
    r = await goals.client.post("/v1/objectives", json=objective_body(cycle_id))
    assert_answer(r, 201, 1)


# --- archived objectives, removed key results ---------------------------------------------


async def test_add_key_result_to_archived_objective(goals):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    await archive_objective(goals.client, objective_id)
    problem, _ = await refused(
        goals, "POST", f"/v1/objectives/{objective_id}/key-results", key_result_body()
    )
    assert "archived" in problem["detail"]


async def test_change_archived_objective(goals):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    key_result_id = await add_key_result(goals.client, objective_id)
    await archive_objective(goals.client, objective_id)
    await refused(goals, "PATCH", f"/v1/objectives/{objective_id}", {"title": "Revived"})
    await refused(goals, "POST", f"/v1/objectives/{objective_id}/archive")
    # Its key results are frozen with it.
    await refused(goals, "PATCH", f"/v1/key-results/{key_result_id}", {"title": "New"})


async def test_archived_objective_cannot_be_a_parent(goals):
    cycle_id = await create_cycle(goals.client)
    parent_id = await create_objective(goals.client, cycle_id)
    child_id = await create_objective(goals.client, cycle_id)
    await archive_objective(goals.client, parent_id)
    problem, _ = await refused(
        goals, "POST", "/v1/objectives", objective_body(cycle_id, parent_id=parent_id)
    )
    assert "parent_id" in error_fields(problem)
    await refused(goals, "PATCH", f"/v1/objectives/{child_id}", {"parent_id": parent_id})


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        pytest.param("PATCH", "", {"title": "New"}, id="revise"),
        pytest.param("POST", "/target", {"target": 99, "reason": "x"}, id="adjust target"),
        pytest.param("POST", "/remove", {"reason": "again"}, id="remove again"),
    ],
)
async def test_change_removed_key_result(goals, method, suffix, body):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    key_result_id = await add_key_result(goals.client, objective_id)
    await remove_key_result(goals.client, key_result_id)
    problem, _ = await refused(goals, method, f"/v1/key-results/{key_result_id}{suffix}", body)
    assert "removed" in problem["detail"]
    assert (await get_json(goals.client, f"/v1/key-results/{key_result_id}"))["version"] == 2


async def test_adjust_target_of_boolean_key_result(goals):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    key_result_id = await add_key_result(
        goals.client, objective_id, kind="boolean", start=0, target=1
    )
    problem, _ = await refused(
        goals, "POST", f"/v1/key-results/{key_result_id}/target", {"target": 2, "reason": "x"}
    )
    assert "target" in error_fields(problem)
    assert (await get_json(goals.client, f"/v1/key-results/{key_result_id}"))["target"] == 1.0


async def test_adjust_target_to_current_target(goals):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    key_result_id = await add_key_result(goals.client, objective_id, start=0, target=10)
    await refused(
        goals, "POST", f"/v1/key-results/{key_result_id}/target", {"target": 10, "reason": "x"}
    )


# --- alignment ----------------------------------------------------------------------------


@pytest.fixture
async def chain(goals):
    """top <- middle <- bottom, in an active cycle."""
    cycle_id = await create_cycle(goals.client)
    top = await create_objective(goals.client, cycle_id, title="Top")
    middle = await create_objective(goals.client, cycle_id, title="Middle", parent_id=top)
    bottom = await create_objective(goals.client, cycle_id, title="Bottom", parent_id=middle)
    return top, middle, bottom


async def test_realign_under_itself(goals, chain):
    top, _, _ = chain
    problem, _ = await refused(goals, "PATCH", f"/v1/objectives/{top}", {"parent_id": top})
    assert "parent_id" in error_fields(problem)
    assert (await get_json(goals.client, f"/v1/objectives/{top}"))["parent_id"] is None


async def test_realign_under_own_child(goals, chain):
    top, middle, _ = chain
    problem, _ = await refused(goals, "PATCH", f"/v1/objectives/{top}", {"parent_id": middle})
    assert "parent_id" in error_fields(problem)


async def test_realign_under_own_grandchild(goals, chain):
    top, _, bottom = chain
    await refused(goals, "PATCH", f"/v1/objectives/{top}", {"parent_id": bottom})
    assert (await get_json(goals.client, f"/v1/objectives/{top}"))["version"] == 1


async def test_refused_realign_applies_no_other_field_of_the_patch(goals, chain):
    top, middle, _ = chain
    await refused(
        goals, "PATCH", f"/v1/objectives/{top}", {"title": "Renamed", "parent_id": middle}
    )
    objective = await get_json(goals.client, f"/v1/objectives/{top}")
    assert (objective["title"], objective["version"]) == ("Top", 1)


async def test_realign_sideways_is_fine(goals, chain):
    top, _, bottom = chain
    r = await goals.client.patch(f"/v1/objectives/{bottom}", json={"parent_id": top})
    assert_answer(r, 200, 2)
    assert (await get_json(goals.client, f"/v1/objectives/{bottom}"))["parent_id"] == top


async def test_parent_that_does_not_exist(goals, chain):
    top, _, _ = chain
    missing = str(uuid.uuid4())
    problem, _ = await refused(
        goals, "PATCH", f"/v1/objectives/{top}", {"parent_id": missing}, status=404
    )
    assert missing in problem["detail"]
    cycle_id = (await get_json(goals.client, f"/v1/objectives/{top}"))["cycle_id"]
    await refused(
        goals, "POST", "/v1/objectives", objective_body(cycle_id, parent_id=missing), status=404
    )


# --- If-Match -----------------------------------------------------------------------------


async def test_stale_if_match_is_412(goals):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    r = await goals.client.patch(f"/v1/objectives/{objective_id}", json={"title": "v2"})
    assert_answer(r, 200, 2)

    _, r = await refused(
        goals,
        "PATCH",
        f"/v1/objectives/{objective_id}",
        {"title": "lost update"},
        status=412,
        headers={"If-Match": etag(1)},
    )
    assert r.headers["etag"] == etag(2)
    assert (await get_json(goals.client, f"/v1/objectives/{objective_id}"))["title"] == "v2"

    r = await goals.client.patch(
        f"/v1/objectives/{objective_id}", json={"title": "v3"}, headers={"If-Match": etag(2)}
    )
    assert_answer(r, 200, 3)
    assert (await get_json(goals.client, f"/v1/objectives/{objective_id}"))["title"] == "v3"


@pytest.mark.parametrize(
    ("method", "suffix", "body", "kind"),
    [
        pytest.param("POST", "/start", None, "scheduled cycle", id="start cycle"),
        pytest.param("POST", "/close", None, "cycle", id="close cycle"),
        pytest.param("POST", "/archive", None, "objective", id="archive objective"),
        pytest.param("PATCH", "", {"weight": 3}, "key result", id="revise key result"),
        pytest.param(
            "POST", "/target", {"target": 70, "reason": "x"}, "key result", id="adjust target"
        ),
        pytest.param("POST", "/remove", {"reason": "x"}, "key result", id="remove key result"),
    ],
)
async def test_if_match_on_every_command(goals, method, suffix, body, kind):
    cycle_id = await create_cycle(goals.client, start=(kind != "scheduled cycle"))
    objective_id = await create_objective(goals.client, cycle_id)
    key_result_id = await add_key_result(goals.client, objective_id)
    base = {
        "scheduled cycle": f"/v1/cycles/{cycle_id}",
        "cycle": f"/v1/cycles/{cycle_id}",
        "objective": f"/v1/objectives/{objective_id}",
        "key result": f"/v1/key-results/{key_result_id}",
    }[kind]
    current = (await get_json(goals.client, base))["version"]

    _, r = await refused(
        goals, method, base + suffix, body, status=412, headers={"If-Match": etag(current + 1)}
    )
    assert r.headers["etag"] == etag(current)

    r = await goals.client.request(
        method, base + suffix, json=body, headers={"If-Match": etag(current)}
    )
    assert_answer(r, 200, current + 1)
    assert (await get_json(goals.client, base))["version"] == current + 1


async def test_weak_and_wildcard_if_match(goals):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    r = await goals.client.patch(
        f"/v1/objectives/{objective_id}", json={"title": "a"}, headers={"If-Match": 'W/"1"'}
    )
    assert_answer(r, 200, 2)
    r = await goals.client.patch(
        f"/v1/objectives/{objective_id}", json={"title": "b"}, headers={"If-Match": "*"}
    )
    assert_answer(r, 200, 3)


@pytest.mark.parametrize("value", ['"abc"', "1.5", '"-1"', "", '"1", "2"', '"9999999999999"'])
async def test_malformed_if_match_is_422(goals, value):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    problem, _ = await refused(
        goals,
        "PATCH",
        f"/v1/objectives/{objective_id}",
        {"title": "x"},
        status=422,
        headers={"If-Match": value},
    )
    assert "If-Match" in error_fields(problem)
    assert (await get_json(goals.client, f"/v1/objectives/{objective_id}"))["version"] == 1


async def test_if_match_on_unknown_id_is_404(goals):
    await refused(
        goals,
        "POST",
        f"/v1/cycles/{uuid.uuid4()}/start",
        status=404,
        headers={"If-Match": etag(1)},
    )


# --- concurrency --------------------------------------------------------------------------


async def test_concurrent_patches_with_the_same_if_match_one_wins(goals):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    before = await stored(goals)
    answers = await asyncio.gather(
        *(
            goals.client.patch(
                f"/v1/objectives/{objective_id}",
                json={"title": f"Title {i}"},
                headers={"If-Match": etag(1)},
            )
            for i in range(8)
        )
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [412] * 7, [a.text for a in answers]
    winner = next(a for a in answers if a.status_code == 200)
    for loser in (a for a in answers if a.status_code == 412):
        assert loser.headers["etag"] == etag(2)
    objective = await get_json(goals.client, f"/v1/objectives/{objective_id}")
    assert objective["version"] == 2
    assert objective["title"] == next(f"Title {i}" for i, a in enumerate(answers) if a is winner)
    assert await stored(goals) == before + 1


async def test_concurrent_patches_without_if_match_all_apply_in_order(goals):
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    key_result_id = await add_key_result(goals.client, objective_id, weight=1)
    answers = await asyncio.gather(
        *(
            goals.client.patch(f"/v1/key-results/{key_result_id}", json={"weight": 10 + i})
            for i in range(10)
        )
    )
    assert [a.status_code for a in answers] == [200] * 10
    assert sorted(a.json()["version"] for a in answers) == list(range(2, 12))
    positions = sorted(int(a.json()["position"].removeprefix("goals:")) for a in answers)
    assert len(set(positions)) == 10
    key_result = await get_json(goals.client, f"/v1/key-results/{key_result_id}")
    assert key_result["version"] == 11
    # The last one applied is the one whose answer has the highest version.
    last = max(range(10), key=lambda i: answers[i].json()["version"])
    assert key_result["weight"] == 10.0 + last


async def test_concurrent_mixed_commands_refusals_do_not_leak(goals):
    """Valid and refused commands on the same aggregate in one burst: only the valid ones are
    stored, and the GET shows exactly their effect."""
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    key_result_id = await add_key_result(goals.client, objective_id, start=0, target=10)
    path = f"/v1/key-results/{key_result_id}"
    before = await stored(goals)
    requests = []
    for i in range(6):
        requests.append(goals.client.patch(path, json={"title": f"KR {i}"}))
        requests.append(goals.client.patch(path, json={"title": "ok", "weight": 0}))  # 422
        requests.append(goals.client.post(f"{path}/target", json={"target": 0, "reason": "x"}))
    answers = await asyncio.gather(*requests)
    ok = [a for a in answers if a.status_code == 200]
    assert len(ok) == 6, [a.text for a in answers]
    assert all(a.status_code == 422 for a in answers if a.status_code != 200)
    assert await stored(goals) == before + 6
    key_result = await get_json(goals.client, path)
    assert (key_result["version"], key_result["weight"], key_result["target"]) == (7, 2.0, 10.0)
    assert key_result["title"].startswith("KR ")

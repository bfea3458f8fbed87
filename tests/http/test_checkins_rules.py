"""The check-in service's rules over HTTP: what the catalogue of goals events allows, what a
client sees while that catalogue is behind, corrections, meetings and paged history."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from services.checkins.main import CheckinsSettings
from services.checkins.main import create_app as create_checkins
from tests.http.checkins_helpers import (
    caught_up,
    check_in,
    check_in_body,
    goals_position,
    meeting_body,
    plan,
)
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
from tests.support import NatsServer, RunningService, serve

TODAY = datetime.now(UTC).date()


async def post_check_in(checkins: RunningService, key_result_id: str, **body: Any) -> Any:
    return await checkins.client.post(
        f"/v1/key-results/{key_result_id}/check-ins", json=check_in_body(**body)
    )


# --- what the catalogue allows ------------------------------------------------------------


async def test_check_in_on_an_unknown_key_result_is_404(
    goals: RunningService, checkins: RunningService
) -> None:
    await plan(goals, checkins)
    before = await stored(checkins)
    r = await post_check_in(checkins, "8b0c1f55-8e0e-4c43-9f0e-3c1f7e2b9a11")
    assert "No key result" in assert_problem(r, 404)["detail"]
    assert await stored(checkins) == before


async def test_check_in_on_a_removed_key_result_is_409_and_says_why(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins)
    await remove_key_result(goals.client, p.key_result_id)
    await caught_up(checkins, goals)
    before = await stored(checkins)
    problem = assert_problem(await post_check_in(checkins, p.key_result_id), 409)
    assert "removed" in problem["detail"] and "no data" in problem["detail"]
    assert await stored(checkins) == before


async def test_check_in_under_an_archived_objective_is_409(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins)
    await archive_objective(goals.client, p.objective_id)
    await caught_up(checkins, goals)
    problem = assert_problem(await post_check_in(checkins, p.key_result_id), 409)
    assert "archived" in problem["detail"]


async def test_check_in_before_the_cycle_starts_is_409(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins, start_cycle=False)
    problem = assert_problem(await post_check_in(checkins, p.key_result_id), 409)
    assert "has not started" in problem["detail"]
    assert await stored(checkins) == 0


async def test_check_in_after_the_cycle_closed_is_409(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins)
    await check_in(checkins.client, p.key_result_id)
    await close_cycle(goals.client, p.cycle_id)
    await caught_up(checkins, goals)
    before = await stored(checkins)
    problem = assert_problem(await post_check_in(checkins, p.key_result_id), 409)
    assert "is closed" in problem["detail"]
    assert await stored(checkins) == before


async def test_a_target_adjustment_moves_the_bounds_of_a_percent_key_result(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins, kind="percent", unit="%", start=0, target=60)
    assert (await post_check_in(checkins, p.key_result_id, value=100)).status_code == 201
    assert_problem(await post_check_in(checkins, p.key_result_id, value=100.5), 422)
    r = await goals.client.post(
        f"/v1/key-results/{p.key_result_id}/target", json={"target": 90, "reason": "stretch"}
    )
    assert r.status_code == 200
    await caught_up(checkins, goals)
    assert (await post_check_in(checkins, p.key_result_id, value=95)).status_code == 201


# --- while the catalogue is behind --------------------------------------------------------


async def test_a_key_result_just_created_is_checked_in_with_min_position(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins)
    r = await goals.client.post(
        f"/v1/objectives/{p.objective_id}/key-results",
        json={"title": "New", "kind": "number", "start": 0, "target": 10, "owner": "bob"},
    )
    assert r.status_code == 201
    created = r.json()
    r = await checkins.client.post(
        f"/v1/key-results/{created['id']}/check-ins",
        params={"min_position": created["position"]},
        json=check_in_body(value=3),
    )
    assert r.status_code == 201, r.text


async def test_while_nats_is_down_an_unknown_key_result_is_a_retryable_409(
    goals: RunningService, checkins: RunningService, nats_server: NatsServer
) -> None:
    p = await plan(goals, checkins)
    nats_server.stop()
    # The goals service keeps taking commands: its store is the source of truth.
    key_result_id = await add_key_result(goals.client, p.objective_id, title="Later")
    await asyncio.sleep(1.0)  # let the consumer notice the outage (it polls every 0.2 s)
    r = await post_check_in(checkins, key_result_id)
    problem = assert_problem(r, 409)
    assert problem["type"].endswith("/not-yet-known")
    assert r.headers["retry-after"] == "1"
    assert "min_position" in problem["detail"]
    # Known key results still take check-ins during the outage.
    assert (await post_check_in(checkins, p.key_result_id)).status_code == 201

    nats_server.start()
    await caught_up(checkins, goals, timeout=30)
    assert (await post_check_in(checkins, key_result_id)).status_code == 201


async def test_min_position_that_never_arrives_is_a_retryable_409(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins)
    checkins.runtime.settings.read_wait_timeout_s = 0.3
    far = await goals_position(goals) + 1000
    r = await checkins.client.post(
        f"/v1/key-results/{p.key_result_id}/check-ins",
        params={"min_position": f"goals:{far}"},
        json=check_in_body(),
    )
    assert assert_problem(r, 409)["type"].endswith("/not-yet-known")


async def test_a_restarted_service_knows_its_catalogue_at_once_and_catches_up(
    goals: RunningService, checkins: RunningService, checkins_settings: CheckinsSettings
) -> None:
    p = await plan(goals, checkins)
    await check_in(checkins.client, p.key_result_id)
    await checkins.stop()
    later = await add_key_result(goals.client, p.objective_id, title="Added while down")
    async with serve(create_checkins(checkins_settings)) as again:
        assert again.runtime.parts["catalogue"].key_result(uuid.UUID(p.key_result_id))
        await caught_up(again, goals)
        assert (await post_check_in(again, later)).status_code == 201
        r = await again.client.get(f"/v1/key-results/{p.key_result_id}/progress")
        assert r.json()["check_in_count"] == 1


# --- corrections --------------------------------------------------------------------------


async def test_a_correction_keeps_the_original_and_the_reason(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins)
    first = await check_in(checkins.client, p.key_result_id, value=30, confidence=7)
    await check_in(checkins.client, p.key_result_id, value=35, confidence=6)
    r = await checkins.client.post(
        f"/v1/check-ins/{first}/correct", json={"value": 28, "reason": "counted twice"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["id"] == first
    body = (await checkins.client.get(f"/v1/check-ins/{first}")).json()
    assert (body["value"], body["confidence"]) == (28, 7)
    assert (body["original_value"], body["original_confidence"]) == (30, 7)
    [correction] = body["corrections"]
    assert correction["reason"] == "counted twice"
    assert (correction["previous_value"], correction["value"]) == (30, 28)
    # Correcting an older check-in does not change the latest.
    progress = (await checkins.client.get(f"/v1/key-results/{p.key_result_id}/progress")).json()
    assert progress["latest"]["value"] == 35


async def test_a_correction_that_changes_nothing_is_409(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins)
    first = await check_in(checkins.client, p.key_result_id, value=30, confidence=7)
    before = await stored(checkins)
    r = await checkins.client.post(
        f"/v1/check-ins/{first}/correct", json={"value": 30, "confidence": 7, "reason": "same"}
    )
    assert "nothing to correct" in assert_problem(r, 409)["detail"]
    assert await stored(checkins) == before


async def test_a_check_in_takes_at_most_a_hundred_corrections(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins)
    first = await check_in(checkins.client, p.key_result_id, value=0, confidence=7)
    for n in range(1, 101):
        r = await checkins.client.post(
            f"/v1/check-ins/{first}/correct", json={"value": n, "reason": f"fix {n}"}
        )
        assert r.status_code == 200, r.text
    before = await stored(checkins)
    r = await checkins.client.post(
        f"/v1/check-ins/{first}/correct", json={"value": 0, "reason": "once more"}
    )
    assert "corrected 100 times" in assert_problem(r, 409)["detail"]
    assert await stored(checkins) == before
    body = (await checkins.client.get(f"/v1/check-ins/{first}")).json()
    assert body["value"] == 100 and len(body["corrections"]) == 100


async def test_no_corrections_once_the_cycle_closed(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins)
    first = await check_in(checkins.client, p.key_result_id)
    await close_cycle(goals.client, p.cycle_id)
    await caught_up(checkins, goals)
    r = await checkins.client.post(
        f"/v1/check-ins/{first}/correct", json={"value": 1, "reason": "late"}
    )
    assert_problem(r, 409)


async def test_unknown_check_in_is_404(goals: RunningService, checkins: RunningService) -> None:
    r = await checkins.client.post(
        "/v1/check-ins/8b0c1f55-8e0e-4c43-9f0e-3c1f7e2b9a11/correct",
        json={"value": 1, "reason": "x"},
    )
    assert_problem(r, 404)
    assert_problem(
        await checkins.client.get("/v1/check-ins/8b0c1f55-8e0e-4c43-9f0e-3c1f7e2b9a11"), 404
    )


# --- history ------------------------------------------------------------------------------


async def test_history_is_paged_newest_first(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins)
    for value in range(1, 8):
        await check_in(checkins.client, p.key_result_id, value=value)
    seen: list[float] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["before"] = cursor
        r = await checkins.client.get(f"/v1/key-results/{p.key_result_id}/check-ins", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        seen.extend(item["value"] for item in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    assert pages == 3


async def test_a_known_key_result_without_check_ins_has_empty_history(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins)
    r = await checkins.client.get(f"/v1/key-results/{p.key_result_id}/check-ins")
    assert r.json() == {"items": [], "next_cursor": None}
    r = await checkins.client.get(f"/v1/key-results/{p.key_result_id}/progress")
    assert r.json()["check_in_count"] == 0 and r.json()["latest"] is None
    r = await checkins.client.get("/v1/key-results/8b0c1f55-8e0e-4c43-9f0e-3c1f7e2b9a11/progress")
    assert_problem(r, 404)


async def test_long_histories_are_snapshotted(
    goals: RunningService, checkins: RunningService
) -> None:
    p = await plan(goals, checkins)
    for value in range(120):
        await check_in(checkins.client, p.key_result_id, value=value)
    app = checkins.runtime.app
    progress = await asyncio.to_thread(app.progress, uuid.UUID(p.key_result_id))
    assert progress is not None and progress.count == 120
    snapshots = list(app.snapshots.get(progress.id, desc=True, limit=1))
    assert snapshots and snapshots[0].originator_version == 100
    r = await checkins.client.get(f"/v1/key-results/{p.key_result_id}/check-ins?limit=1")
    assert r.json()["items"][0]["number"] == 120


# --- meetings -----------------------------------------------------------------------------


async def meeting_plan(goals: RunningService, checkins: RunningService) -> Any:
    cycle_id = await create_cycle(
        goals.client,
        starts_on=(TODAY - timedelta(days=30)).isoformat(),
        ends_on=(TODAY + timedelta(days=60)).isoformat(),
    )
    await create_objective(goals.client, cycle_id, team="platform")
    await caught_up(checkins, goals)
    return cycle_id


async def test_a_meeting_is_recorded_read_and_amended(
    goals: RunningService, checkins: RunningService
) -> None:
    cycle_id = await meeting_plan(goals, checkins)
    held_on = (TODAY - timedelta(days=2)).isoformat()
    r = await checkins.client.post(
        "/v1/teams/platform/check-in-meetings", json=meeting_body(cycle_id, held_on=held_on)
    )
    assert r.status_code == 201, r.text
    meeting_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/check-in-meetings/{meeting_id}"
    body = (await checkins.client.get(f"/v1/check-in-meetings/{meeting_id}")).json()
    assert body["team"] == "platform" and body["held_on"] == held_on
    assert body["wins"] == meeting_body(cycle_id)["wins"]

    r = await checkins.client.patch(
        f"/v1/check-in-meetings/{meeting_id}",
        json={"wins": ["Shipped the importer", "Closed 12 tickets"], "reason": "forgot one"},
    )
    assert r.status_code == 200, r.text
    body = (await checkins.client.get(f"/v1/check-in-meetings/{meeting_id}")).json()
    assert body["wins"] == ["Shipped the importer", "Closed 12 tickets"]
    assert body["learnings"] == meeting_body(cycle_id)["learnings"]
    assert body["amendments"] == 1 and body["version"] == 2


async def test_meeting_rules(goals: RunningService, checkins: RunningService) -> None:
    cycle_id = await meeting_plan(goals, checkins)
    today = TODAY.isoformat()
    post = checkins.client.post
    ok = await post(
        "/v1/teams/platform/check-in-meetings", json=meeting_body(cycle_id, held_on=today)
    )
    assert ok.status_code == 201
    before = await stored(checkins)
    again = await post(
        "/v1/teams/platform/check-in-meetings", json=meeting_body(cycle_id, held_on=today)
    )
    assert "already recorded" in assert_problem(again, 409)["detail"]
    stranger = await post(
        "/v1/teams/nobody/check-in-meetings", json=meeting_body(cycle_id, held_on=today)
    )
    assert "no objectives" in assert_problem(stranger, 409)["detail"]
    future = (TODAY + timedelta(days=3)).isoformat()
    r = await post(
        "/v1/teams/platform/check-in-meetings", json=meeting_body(cycle_id, held_on=future)
    )
    assert assert_problem(r, 422)["errors"][0]["field"] == "held_on"
    r = await post(
        "/v1/teams/platform/check-in-meetings",
        json=meeting_body("8b0c1f55-8e0e-4c43-9f0e-3c1f7e2b9a11", held_on=today),
    )
    assert_problem(r, 404)
    assert await stored(checkins) == before

    await close_cycle(goals.client, cycle_id)
    await caught_up(checkins, goals)
    yesterday = (TODAY - timedelta(days=1)).isoformat()
    r = await post(
        "/v1/teams/platform/check-in-meetings", json=meeting_body(cycle_id, held_on=yesterday)
    )
    assert "is closed" in assert_problem(r, 409)["detail"]
    r = await checkins.client.patch(
        f"/v1/check-in-meetings/{ok.json()['id']}", json={"wins": ["x"], "reason": "late"}
    )
    assert_problem(r, 409)
    assert await stored(checkins) == before

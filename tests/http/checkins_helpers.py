"""Helpers for the check-in service's tests: a planned cycle in the goals service, and waiting
until the check-in service's catalogue has seen it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from tests.http.helpers import add_key_result, create_cycle, create_objective
from tests.support import RunningService


@dataclass
class Plan:
    cycle_id: str
    objective_id: str
    key_result_id: str
    team: str = "platform"


async def goals_position(goals: RunningService) -> int:
    n = await asyncio.to_thread(goals.runtime.app.recorder.max_notification_id)
    return int(n or 0)


async def caught_up(checkins: RunningService, goals: RunningService, timeout: float = 10) -> None:
    """Wait until the check-in service has applied every goals event stored so far."""
    position = await goals_position(goals)
    consumer = checkins.runtime.consumers[0]
    assert await consumer.wait_for("okr/goals", position, timeout), (
        f"catalogue stuck at {consumer.positions} < goals:{position}"
    )


async def plan(
    goals: RunningService,
    checkins: RunningService,
    *,
    start_cycle: bool = True,
    team: str = "platform",
    **key_result: Any,
) -> Plan:
    """A cycle (started unless told otherwise), an objective of `team`, one key result
    (`key_result` overrides its fields: kind, start, target...)."""
    cycle_id = await create_cycle(goals.client, start=start_cycle)
    objective_id = await create_objective(goals.client, cycle_id, team=team)
    key_result_id = await add_key_result(goals.client, objective_id, **key_result)
    await caught_up(checkins, goals)
    return Plan(cycle_id, objective_id, key_result_id, team)


def check_in_body(**overrides: Any) -> dict[str, Any]:
    return {"value": 30, "confidence": 7, "note": "good week", "blockers": [], **overrides}


async def check_in(client: httpx.AsyncClient, key_result_id: str, **overrides: Any) -> str:
    r = await client.post(
        f"/v1/key-results/{key_result_id}/check-ins", json=check_in_body(**overrides)
    )
    assert r.status_code == 201, r.text
    check_in_id: str = r.json()["id"]
    return check_in_id


def meeting_body(cycle_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "cycle_id": cycle_id,
        "held_on": "2027-01-11",
        "wins": ["Shipped the importer: pairing with support found the real issue"],
        "learnings": ["Smaller PRs merge faster"],
        "blockers": [],
        "priorities": ["Finish the export"],
        **overrides,
    }

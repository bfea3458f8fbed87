"""Helpers for the review service's tests: a review of a planned, checked-in cycle, and waiting
until the review service has seen the goals and checkins events."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.http.checkins_helpers import Plan, caught_up, check_in, plan
from tests.support import RunningService


async def synced(reviews: RunningService, goals: RunningService, checkins: RunningService) -> None:
    """Wait until the review service has every goals and checkins event stored so far."""
    await caught_up(reviews, goals)
    at = await asyncio.to_thread(checkins.runtime.app.recorder.max_notification_id)
    assert await reviews.runtime.consumers[0].wait_for("okr/checkins", int(at or 0), 10)


async def open_review(reviews: RunningService, cycle_id: str, team: str = "platform") -> Any:
    return await reviews.client.post("/v1/reviews", json={"cycle_id": cycle_id, "team": team})


async def reviewed(
    goals: RunningService, checkins: RunningService, reviews: RunningService
) -> tuple[Plan, str]:
    """A started cycle with one objective of `platform` and one key result (0 → 100) checked
    in at 40, and an open review of it (suggested score 0.4). Returns (plan, review id)."""
    p = await plan(goals, checkins, start=0, target=100)
    await check_in(checkins.client, p.key_result_id, value=40)
    await synced(reviews, goals, checkins)
    r = await open_review(reviews, p.cycle_id)
    assert r.status_code == 201, r.text
    return p, r.json()["id"]

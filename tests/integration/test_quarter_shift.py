"""The quarter shift across services: a finalised review carries its objectives into the next
cycle, exactly once per decision, whatever is redelivered, restarted or killed.

Real nats-server, real stores (SQLite and PostgreSQL); the goals service runs as a separate OS
process where it is killed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.msg import Msg

from services.checkins.main import create_app as create_checkins
from services.goals.application import GoalsApplication
from services.goals.main import GoalsSettings
from services.goals.policies import CarryOver
from services.reviews.main import create_app as create_reviews
from shared.consumer import Consumer, ProcessInbox
from shared.nats import NatsLink
from shared.store import store_env
from tests.http.checkins_helpers import caught_up, check_in, goals_position, plan
from tests.http.helpers import create_cycle
from tests.support import (
    SECRET,
    RunningService,
    auth,
    declare_stream,
    free_port,
    read_stream,
    serve,
)

ROOT = Path(__file__).resolve().parents[2]


def carried_over_events(settings: GoalsSettings) -> list[Any]:
    """Every `Objective.CarriedOver` event in the goals store."""
    app = GoalsApplication(store_env(settings))
    try:
        notifications = app.recorder.select_notifications(0, 100_000, inclusive_of_start=False)
        return [n for n in notifications if n.topic.endswith("Objective.CarriedOver")]
    finally:
        app.close()


async def review_to_finalise(
    goals: Any, checkins: RunningService, reviews: RunningService
) -> tuple[str, str, str]:
    """A planned, checked-in cycle and a review of it with every decision made; returns
    (review id, next cycle id, key result id)."""
    p = await plan(goals, checkins, start=0, target=50)
    await check_in(checkins.client, p.key_result_id, value=15)
    await check_in(checkins.client, p.key_result_id, value=20)
    next_cycle = await create_cycle(
        goals.client, start=False, name="Q2", starts_on="2027-04-01", ends_on="2027-06-30"
    )
    await caught_up(reviews, goals)
    consumer = reviews.runtime.consumers[0]
    checkins_at = await asyncio.to_thread(checkins.runtime.app.recorder.max_notification_id)
    assert await consumer.wait_for("okr/checkins", checkins_at, 10)
    r = await reviews.client.post("/v1/reviews", json={"cycle_id": p.cycle_id, "team": "platform"})
    assert r.status_code == 201, r.text
    review_id = r.json()["id"]
    r = await reviews.client.post(
        f"/v1/reviews/{review_id}/carry-over",
        json={
            "objective_id": p.objective_id,
            "decision": "carry_over",
            "next_cycle_id": next_cycle,
        },
    )
    assert r.status_code == 200, r.text
    return review_id, next_cycle, p.key_result_id


async def finalise(reviews: RunningService, review_id: str) -> dict[str, Any]:
    r = await reviews.client.post(f"/v1/reviews/{review_id}/finalise")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = (await reviews.client.get(f"/v1/reviews/{review_id}")).json()
    return body


async def carried(goals_client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """Wait until the goals service has the carried objective; return it."""
    objective_id = body["objectives"][0]["carried_objective_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            r = await goals_client.get(f"/v1/objectives/{objective_id}")
        except httpx.TransportError:
            r = None
        if r is not None and r.status_code == 200:
            found: dict[str, Any] = r.json()
            return found
        await asyncio.sleep(0.1)
    raise AssertionError("the carried objective never appeared")


# --- in one process -----------------------------------------------------------------------


async def test_a_whole_review_carries_one_objective_with_its_lessons(
    goals: RunningService, checkins: RunningService, reviews: RunningService
) -> None:
    review_id, next_cycle, key_result_id = await review_to_finalise(goals, checkins, reviews)
    r = await reviews.client.post(
        f"/v1/reviews/{review_id}/reflections", json={"kind": "learned", "text": "Smaller bets"}
    )
    assert r.status_code == 200
    body = await finalise(reviews, review_id)
    objective = await carried(goals.client, body)
    assert objective["cycle_id"] == next_cycle
    assert objective["carried_from"] == body["objectives"][0]["objective_id"]
    assert objective["review_id"] == review_id
    assert objective["lessons"] == [{"kind": "learned", "text": "Smaller bets"}]
    kr = (
        await goals.client.get(f"/v1/key-results/{body['key_results'][0]['carried_key_result_id']}")
    ).json()
    assert (kr["start"], kr["target"], kr["carried_from"]) == (20.0, 50.0, key_result_id)
    assert kr["objective_id"] == objective["id"]


async def test_a_finalisation_redelivered_by_nats_carries_nothing_twice(
    goals: RunningService,
    checkins: RunningService,
    reviews: RunningService,
    goals_settings: GoalsSettings,
) -> None:
    review_id, _, _ = await review_to_finalise(goals, checkins, reviews)
    body = await finalise(reviews, review_id)
    await carried(goals.client, body)
    stored_before = await goals_position(goals)

    # Republish every reviews event after the duplicate window: the stream holds them twice.
    url = goals_settings.nats_url
    await declare_stream(url, stream_duplicate_window_s=0.2)
    await asyncio.sleep(0.3)
    messages = await read_stream(url, 0)
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        ours = [m for m in messages if m.subject.startswith("okr.reviews.")]
        assert ours
        for m in ours:
            await js.publish(m.subject, m.data, stream="OKR", headers=m.headers)
    finally:
        await nc.close()
    consumer = goals.runtime.consumers[0]
    deadline = time.monotonic() + 15
    while consumer.pending or not consumer.caught_up:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    assert await goals_position(goals) == stored_before
    await goals.stop()
    assert len(carried_over_events(goals_settings)) == 1


class CrashesBeforeAck(Consumer):
    async def acknowledge(self, msgs: Sequence[Msg]) -> None:
        return None


async def test_goals_stopping_between_the_carry_over_and_its_ack_carries_once(
    goals: RunningService,
    checkins: RunningService,
    reviews: RunningService,
    goals_settings: GoalsSettings,
) -> None:
    review_id, _, _ = await review_to_finalise(goals, checkins, reviews)
    await goals.stop()  # the goals service is down when the review is finalised
    body = await finalise(reviews, review_id)

    # A goals process that carries the objective over, then dies before acknowledging.
    app = GoalsApplication(store_env(goals_settings))
    link = NatsLink(goals_settings.nats_url, "crashing-goals")
    inbox = ProcessInbox(app, "carry-over", CarryOver(app))
    crashing = CrashesBeforeAck(
        "goals",
        "carry-over",
        link,
        inbox,
        stream="OKR",
        subjects=["okr.reviews.>"],
        ack_wait=2,
        poll_interval=0.2,
    )
    await link.start()
    await crashing.start()
    try:
        deadline = time.monotonic() + 15
        while not carried_over_events(goals_settings):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        await crashing.stop()
        await link.close()
        app.close()

    # The real service starts again: JetStream redelivers what was never acknowledged.
    from services.goals.main import create_app as create_goals

    async with serve(create_goals(goals_settings)) as again:
        objective = await carried(again.client, body)
        assert objective["review_id"] == review_id
        consumer = again.runtime.consumers[0]
        deadline = time.monotonic() + 15
        while not (consumer.caught_up and consumer.pending == 0):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.5)  # past the ack wait: every redelivery has come and gone
    assert len(carried_over_events(goals_settings)) == 1


# --- the goals service as a process, killed -----------------------------------------------


@contextmanager
def goals_process(settings: GoalsSettings, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OKR_")} | {
        "OKR_NATS_URL": settings.nats_url,
        "OKR_DATA_DIR": str(settings.data_dir),
        "OKR_JWT_SECRET": SECRET,
        "OKR_GOALS_PORT": str(port),
        "OKR_CONSUMER_ACK_WAIT_S": "2",
        "OKR_CONSUMER_POLL_INTERVAL_S": "0.2",
        "PYTHONPATH": str(ROOT),
    }
    if settings.database_url is not None:
        env["OKR_DATABASE_URL"] = settings.database_url.get_secret_value()
        env["OKR_GOALS_DATABASE_SCHEMA"] = settings.database_schema
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.goals"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "the goals service exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the goals service never became ready"
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


class GoalsClient:
    """Enough of a `RunningService` for the helpers: a client of the goals process, and its
    store opened beside it (to read how far its log has got)."""

    def __init__(self, port: int, settings: GoalsSettings) -> None:
        self.client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=auth(), timeout=20
        )
        self.app = GoalsApplication(store_env(settings))
        self.runtime = self

    async def close(self) -> None:
        await self.client.aclose()
        self.app.close()


async def test_goals_killed_right_after_finalisation_carries_exactly_once(
    goals_settings: GoalsSettings, checkins_settings: Any, reviews_settings: Any
) -> None:
    port = free_port()
    with goals_process(goals_settings, port) as proc:
        goals = GoalsClient(port, goals_settings)
        async with (
            serve(create_checkins(checkins_settings)) as checkins,
            serve(create_reviews(reviews_settings)) as reviews,
        ):
            review_id, _, _ = await review_to_finalise(goals, checkins, reviews)
            body = await finalise(reviews, review_id)
            # The goals process dies at once: the carry-over may not have happened yet, or
            # happened without its acknowledgement reaching NATS.
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        await goals.close()

    with goals_process(goals_settings, port):
        goals = GoalsClient(port, goals_settings)
        objective = await carried(goals.client, body)
        assert objective["review_id"] == review_id
        await asyncio.sleep(3)  # past the ack wait: redeliveries, if any, have been handled
        await goals.close()
    assert len(carried_over_events(goals_settings)) == 1

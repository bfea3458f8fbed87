"""1,000 check-ins on one key result from 8 concurrent clients: exactly 1,000 stored, none lost,
none doubled, no 5xx, and every one of them on the stream."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx

from services.checkins.main import CheckinsSettings
from tests.http.checkins_helpers import check_in_body, goals_position, plan
from tests.http.helpers import stored
from tests.support import RunningService, auth, bodies, read_stream

CLIENTS = 8
EACH = 125


async def test_a_thousand_check_ins_from_eight_clients(
    goals: RunningService, checkins: RunningService, checkins_settings: CheckinsSettings
) -> None:
    p = await plan(goals, checkins)
    statuses: Counter[int] = Counter()
    answers: list[dict[str, str]] = []

    async def client(n: int, replay: bool = False) -> None:
        async with httpx.AsyncClient(
            base_url=checkins.base_url, headers=auth(f"user-{n}"), timeout=60
        ) as c:
            for i in range(EACH):
                r = await c.post(
                    f"/v1/key-results/{p.key_result_id}/check-ins",
                    json=check_in_body(value=n * 1000 + i, confidence=i % 11),
                    headers={"Idempotency-Key": f"load-{n}-{i}"},
                )
                statuses[r.status_code] += 1
                if not replay:
                    answers.append(r.json())

    await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    assert statuses == {201: CLIENTS * EACH}, statuses

    progress = await asyncio.to_thread(checkins.runtime.app.progress, uuid.UUID(p.key_result_id))
    assert progress is not None and progress.count == CLIENTS * EACH
    app = checkins.runtime.app
    newest_first = await asyncio.to_thread(app.check_ins, progress, limit=CLIENTS * EACH + 1)
    entries = newest_first[::-1]
    assert [e["number"] for e in entries] == list(range(1, CLIENTS * EACH + 1))
    assert sorted(e["value"] for e in entries) == sorted(
        float(n * 1000 + i) for n in range(CLIENTS) for i in range(EACH)
    )
    assert {a["id"] for a in answers} == {e["id"] for e in entries}
    assert await stored(checkins) == 1 + CLIENTS * EACH  # opened, then each check-in once

    # Every client retries everything: the first answers come back, nothing is stored twice.
    statuses.clear()
    await asyncio.gather(*(client(n, replay=True) for n in range(CLIENTS)))
    assert statuses == {201: CLIENTS * EACH}, statuses
    assert await stored(checkins) == 1 + CLIENTS * EACH

    # And all of them reach the stream, once each, in the order they were stored.
    expected = await goals_position(goals) + 1 + CLIENTS * EACH
    messages = await read_stream(checkins_settings.nats_url, expected, timeout=60)
    ours = [b for b in bodies(messages) if b["source"] == "okr/checkins"]
    assert len(ours) == 1 + CLIENTS * EACH
    sequences = [b["sequence"] for b in ours]
    assert sequences == sorted(set(sequences))
    assert [b["data"]["number"] for b in ours[1:]] == list(range(1, CLIENTS * EACH + 1))

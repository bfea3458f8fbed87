"""Rebuilding the views from the beginning while the service keeps answering: a progress bar,
no gap in answers, the same views afterwards, and the service carries on with the new ones."""

from __future__ import annotations

import asyncio
import io
import json
import time

import nats
import pytest

from services.projections.main import ProjectionsApplication, ProjectionsSettings
from services.projections.rebuild import rebuild
from shared.sql import Database
from shared.store import store_env
from tests.http.checkins_helpers import check_in, plan
from tests.support import RunningService


async def tree(projections: RunningService, cycle_id: str, *after: str) -> dict:
    r = await projections.client.get(
        f"/v1/cycles/{cycle_id}/okrs", params={"min_position": list(after)}
    )
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_rebuild_switches_without_a_gap_and_the_service_carries_on(
    goals: RunningService,
    checkins: RunningService,
    projections: RunningService,
    projections_settings: ProjectionsSettings,
) -> None:
    p = await plan(goals, checkins, start=0, target=100)
    for value in (10, 20, 30):
        await check_in(checkins.client, p.key_result_id, value=value)
    at = await asyncio.to_thread(checkins.runtime.app.recorder.max_notification_id)
    before = await tree(projections, p.cycle_id, f"checkins:{at}")
    audit_before = (await projections.client.get("/v1/audit", params={"limit": 500})).json()

    # The rebuild runs as the CLI does: its own connection to the same store and NATS.
    app = ProjectionsApplication(store_env(projections_settings))
    out = io.StringIO()
    try:
        task = asyncio.create_task(rebuild(projections_settings, Database(app), out=out))
        answers = 0
        while not task.done():
            assert (await tree(projections, p.cycle_id))["objectives"] == before["objectives"]
            answers += 1
            await asyncio.sleep(0.02)
        assert await task == 2
        assert answers > 0
        assert "views g2" in out.getvalue() and "100%" in out.getvalue()

        live = projections.runtime.parts["views"]
        deadline = time.monotonic() + 10
        while live.tables.generation != 2:
            assert time.monotonic() < deadline, "the service never switched"
            await asyncio.sleep(0.1)
        assert (await tree(projections, p.cycle_id))["objectives"] == before["objectives"]
        audit_after = (await projections.client.get("/v1/audit", params={"limit": 500})).json()

        # The same entries; their positions follow the order of application, which a batch
        # may interleave differently across services.
        def strip(page: dict) -> list[str]:
            return sorted(
                json.dumps({k: v for k, v in e.items() if k != "pos"}, sort_keys=True)
                for e in page["items"]
            )

        assert strip(audit_after) == strip(audit_before)

        # New events land in the new generation through the service's own consumer.
        await check_in(checkins.client, p.key_result_id, value=44)
        at = await asyncio.to_thread(checkins.runtime.app.recorder.max_notification_id)
        now = await tree(projections, p.cycle_id, f"checkins:{at}")
        assert now["objectives"][0]["key_results"][0]["current"] == 44

        # A second rebuild drops the generation before the previous one, and its consumer.
        assert await rebuild(projections_settings, Database(app), progress=False) == 3
        db = Database(app)
        with pytest.raises(Exception), db.transaction(commit=False) as tx:
            tx.execute("SELECT COUNT(*) FROM {t}view_entities")
        nc = await nats.connect(projections_settings.nats_url)
        try:
            names = [c.name for c in await nc.jetstream().consumers_info("OKR")]
        finally:
            await nc.close()
        assert "projections-views" not in names
        assert "projections-views-g2" in names and "projections-views-g3" in names
    finally:
        app.close()

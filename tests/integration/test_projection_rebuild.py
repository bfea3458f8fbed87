"""Rebuilding the views from the beginning while the service keeps answering: a progress bar,
no gap in answers, the same views afterwards, and the service carries on with the new ones."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Sequence

import nats
import pytest

from services.projections import rebuild as rebuilding
from services.projections.main import ProjectionsApplication, ProjectionsSettings
from services.projections.rebuild import rebuild, set_live_generation
from services.projections.views import Tables, Views
from shared.sql import Database, Tx
from shared.store import store_env
from tests.http.checkins_helpers import check_in, plan
from tests.support import RunningService


async def tree(projections: RunningService, cycle_id: str, *after: str) -> dict:
    r = await projections.client.get(
        f"/v1/cycles/{cycle_id}/okrs", params={"min_position": list(after)}
    )
    assert r.status_code == 200, r.text
    return r.json()


async def switched(projections: RunningService, generation: int) -> None:
    views = projections.runtime.parts["views"]
    deadline = time.monotonic() + 10
    while views.tables.generation != generation:
        assert time.monotonic() < deadline, "the service never switched"
        await asyncio.sleep(0.1)


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

        await switched(projections, 2)
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


def index_names(app: ProjectionsApplication, table: str) -> set[str]:
    """The secondary indexes on `table` (its name without the schema)."""
    db = Database(app)
    with db.transaction(commit=False) as tx:
        if db.postgres:
            rows = tx.execute(
                "SELECT indexname AS name FROM pg_indexes WHERE schemaname = ?"
                " AND tablename = ? AND indexname NOT LIKE '%%pkey'",
                (app.recorder.datastore.schema, table),  # type: ignore[attr-defined]
            ).fetchall()
        else:
            rows = tx.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
                " AND name NOT LIKE 'sqlite_autoindex%'",
                (table,),
            ).fetchall()
    return {row["name"] for row in rows}


def generation_indexes(app: ProjectionsApplication, tables: Tables) -> set[str]:
    names = set()
    for table in (tables.entities, tables.history, tables.audit):
        names |= index_names(app, table.removeprefix("{t}"))
    return {name.removeprefix(tables.base) for name in names}


async def test_a_rebuild_fills_its_tables_first_and_indexes_them_before_going_live(
    goals: RunningService,
    checkins: RunningService,
    projections: RunningService,
    projections_settings: ProjectionsSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = await plan(goals, checkins, start=0, target=100)
    await check_in(checkins.client, p.key_result_id, value=10)
    app = ProjectionsApplication(store_env(projections_settings))
    created: list[list[str]] = []

    class Recording(Database):
        def create(self, statements: Sequence[str]) -> None:
            created.append([s for s in statements if "CREATE INDEX" in s])
            super().create(statements)

    try:
        db = Recording(app)
        live = generation_indexes(app, Tables(1))
        assert live == {
            "_entities_cycle",
            "_entities_parent",
            "_history_time",
            "_audit_entity",
            "_audit_related",
            "_audit_at",
        }, live
        # While it applies the stream, the new generation has its primary keys only; the
        # other indexes are there when it goes live. Looked at from inside the rebuild, at
        # its first batch and at the switch.
        at_first_batch: list[set[str]] = []
        at_switch: list[set[str]] = []

        # (Through connections of their own: the rebuild's are in its transactions.)
        observer = ProjectionsApplication(store_env(projections_settings))

        class Watched(Views):
            def flush(self, tx: Tx) -> None:
                if not at_first_batch:
                    at_first_batch.append(generation_indexes(observer, Tables(2)))
                super().flush(tx)

        def switch(db: Database, generation: int) -> None:
            at_switch.append(generation_indexes(observer, Tables(generation)))
            set_live_generation(db, generation)

        monkeypatch.setattr(rebuilding, "Views", Watched)
        monkeypatch.setattr(rebuilding, "set_live_generation", switch)
        try:
            assert await rebuild(projections_settings, db, progress=False) == 2
        finally:
            observer.close()
        assert at_first_batch == [set()]
        assert at_switch == [live]
        # Each index in a transaction of its own: a live writer on the same SQLite file
        # waits for one of them at a time.
        building = [c for c in created if c]
        assert len(building) == len(live) and all(len(c) == 1 for c in building), building
        assert generation_indexes(app, Tables(2)) == live
        await switched(projections, 2)
        await check_in(checkins.client, p.key_result_id, value=20)
        at = await asyncio.to_thread(checkins.runtime.app.recorder.max_notification_id)
        assert (await tree(projections, p.cycle_id, f"checkins:{at}"))["objectives"]

        # A generation made live without them (`switch` to a rebuild that stopped short) gets
        # them when the service's consumer opens it.
        await asyncio.to_thread(db.create, Tables(3).create(indexed=False))
        assert generation_indexes(app, Tables(3)) == set()
        await asyncio.to_thread(set_live_generation, db, 3)
        await switched(projections, 3)
        assert generation_indexes(app, Tables(3)) == live
        assert (await tree(projections, p.cycle_id, f"checkins:{at}"))["objectives"]
    finally:
        app.close()

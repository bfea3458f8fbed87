"""The parts' benchmark measures the work it names: the check-ins go through the writer into
the store, and the events through the views' inbox, on both stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import dataset, parts
from bench.common import Store
from services.checkins.application import CheckinsApplication
from services.projections.main import ProjectionsApplication
from shared.sql import Database
from shared.store import store_env
from tests.system import ADMIN_URL


def _checked(figures: list[Any], names: list[str], count_key: str, count: int) -> None:
    assert [f.name for f in figures] == names
    for f in figures:
        assert f.unit == "µs" and f.value > 0
        assert f.detail["system_us"] >= 0  # counted in clock ticks: nothing, for so few
        assert f.detail[count_key] == count


async def test_the_parts_measure_what_they_name(store: dict[str, Any], tmp_path: Path):
    kind = "postgres" if "database_url" in store else "sqlite"
    with Store.create(kind, tmp_path, admin_url=ADMIN_URL) as bench_store:
        writer = await parts.writer(bench_store, key_results=5, batches=[1, 4], check_ins=8)
        _checked(
            writer,
            ["writer CPU per check-in, batches of 1", "writer CPU per check-in, batches of 4"],
            "check_ins",
            8,
        )
        with dataset.opened(bench_store, "checkins", CheckinsApplication) as checkins:
            # Each key result's first check-in opens its progress (two events), then 8 + 8.
            assert dataset.max_position(checkins) == 5 * 2 + 16

        views = parts.views(bench_store, key_results=5, batches=[1, 4], events=8)
        _checked(
            views,
            ["views CPU per event, batches of 1", "views CPU per event, batches of 4"],
            "events",
            8,
        )
        app = ProjectionsApplication(
            store_env(bench_store.settings("projections", parts.UNUSED_NATS_URL))
        )
        try:
            with Database(app).transaction(commit=False) as tx:
                row = tx.execute("SELECT COUNT(*) AS n FROM {t}view_audit").fetchone()
                # Five progresses opened, then 8 + 8 check-ins, each applied once.
                assert int(row["n"]) == 5 + 16
        finally:
            app.close()


async def test_a_hand_off_is_timed_over_its_rounds():
    figure = await parts.hand_off(50)
    assert figure.value > 0 and figure.detail["rounds"] == 50

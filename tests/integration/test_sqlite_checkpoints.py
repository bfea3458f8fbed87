"""SQLite stores checkpoint their write-ahead log from a thread of their own
(`WalCheckpointer`), not inside the commit that takes the WAL past SQLite's 1,000 pages."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from services.goals.application import GoalsApplication
from services.goals.domain import Cycle
from services.goals.main import GoalsSettings
from shared import store as store_module
from shared.domain import CommandContext, command_context
from shared.store import WAL_AUTOCHECKPOINT_PAGES, store_env

CTX = CommandContext(actor="alice", correlation_id="c", causation_id="r", roles=frozenset())


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GoalsApplication]:
    monkeypatch.setattr(store_module, "WAL_CHECKPOINT_EVERY_S", 0.01)
    settings = GoalsSettings(jwt_secret="s" * 32, data_dir=tmp_path / "data")
    application = GoalsApplication(store_env(settings))
    yield application
    application.close()


def _wal(app: GoalsApplication) -> Path:
    return Path(app.recorder.datastore.pool.db_name + "-wal")  # type: ignore[attr-defined]


def _save_cycles(app: GoalsApplication, n: int, name_size: int) -> None:
    with command_context(CTX):
        cycles = [
            Cycle.schedule("x" * name_size, date(2027, 1, 1), date(2027, 3, 31)) for _ in range(n)
        ]
    app.save(*cycles)


def test_the_store_connections_leave_checkpoints_to_the_thread(app: GoalsApplication) -> None:
    pool = app.recorder.datastore.pool  # type: ignore[attr-defined]
    conn = pool.get_connection(is_writer=True)  # the one made with the tables, if kept
    try:
        first = conn._sqlite_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    finally:
        pool.put_connection(conn)
    fresh = pool._create_connection()
    try:
        later = fresh._sqlite_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    finally:
        fresh.close()
    assert first == later == WAL_AUTOCHECKPOINT_PAGES
    assert any(t.name == "goals-wal-checkpoints" for t in threading.enumerate())


def test_the_wal_stays_small_while_commits_never_checkpoint(app: GoalsApplication) -> None:
    """About 8 MB of events in 40 commits: far past SQLite's own threshold of 1,000 pages (4 MB)
    and below the commits' fallback (40 MB), so only the thread can have kept the WAL small."""
    for _ in range(40):
        _save_cycles(app, 20, 10_000)
        time.sleep(0.03)
    assert _wal(app).stat().st_size < 2_000_000
    assert len(app.recorder.select_notifications(start=None, limit=10_000)) == 800


def test_closing_stops_the_thread(tmp_path: Path) -> None:
    settings = GoalsSettings(jwt_secret="s" * 32, data_dir=tmp_path / "data")
    application = GoalsApplication(store_env(settings))
    _save_cycles(application, 5, 100)
    checkpointer = application._checkpointer
    assert checkpointer is not None
    thread = checkpointer._thread  # this application's, whatever other tests left running
    application.close()
    assert not thread.is_alive()
    with sqlite3.connect(tmp_path / "data" / "goals.db") as db:
        assert db.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0] == 5

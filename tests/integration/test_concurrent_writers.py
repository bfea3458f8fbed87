"""Two applications writing to one store, as a rebuild beside the live projections service
does: a transaction that reads before it writes commits even when the other one committed in
between. On SQLite (`SQLiteStore`) a writer takes the file's write lock at BEGIN, so the other
one waits for it; begun the default way, it failed at once with "database is locked"."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from services.projections.main import ProjectionsApplication, ProjectionsSettings
from shared.sql import Database
from shared.store import store_env
from tests.support import SECRET

TABLE = "CREATE TABLE IF NOT EXISTS {t}notes (k TEXT PRIMARY KEY, n INTEGER NOT NULL)"


@pytest.fixture
def apps(store: dict[str, Any]) -> Iterator[tuple[ProjectionsApplication, ProjectionsApplication]]:
    settings = ProjectionsSettings(jwt_secret=SECRET, **store)
    first = ProjectionsApplication(env=store_env(settings))
    second = ProjectionsApplication(env=store_env(settings))
    try:
        Database(first).create([TABLE])
        yield first, second
    finally:
        first.close()
        second.close()


def test_a_writer_that_reads_first_commits_beside_another_writer(
    apps: tuple[ProjectionsApplication, ProjectionsApplication],
) -> None:
    mine, theirs = Database(apps[0]), Database(apps[1])
    finished: dict[str, float] = {}
    failures: list[BaseException] = []

    def other_writer() -> None:
        try:
            with theirs.transaction() as tx:
                tx.execute("INSERT INTO {t}notes VALUES ('theirs', 2)")
            finished["theirs"] = time.monotonic()
        except BaseException as e:  # reported below
            failures.append(e)

    with mine.transaction() as tx:
        count = tx.execute("SELECT COUNT(*) AS n FROM {t}notes").fetchone()["n"]
        other = threading.Thread(target=other_writer)
        other.start()
        time.sleep(0.3)  # the other writer tries while this one holds its first read
        tx.execute("INSERT INTO {t}notes VALUES ('mine', ?)", (count + 1,))
    finished["mine"] = time.monotonic()
    other.join(timeout=10)

    assert not failures, failures
    with mine.transaction(commit=False) as tx:
        rows = tx.execute("SELECT k, n FROM {t}notes ORDER BY k").fetchall()
    assert [(r["k"], r["n"]) for r in rows] == [("mine", 1), ("theirs", 2)]
    if not mine.postgres:
        # The file's write lock was taken at BEGIN: the other writer waited for this one.
        assert finished["mine"] <= finished["theirs"]

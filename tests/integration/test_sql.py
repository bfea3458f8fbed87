"""The bulk writes of `shared.sql.Tx` on real stores: `insert` (multi-row statements on SQLite,
pipelined statements on PostgreSQL) and `append` (PostgreSQL's COPY) keep every value as it
was, whatever it holds, across more rows than one statement takes, and a failed transaction
keeps none of them."""

from __future__ import annotations

from typing import Any

import pytest
from eventsourcing.persistence import PersistenceError

from services.projections.main import ProjectionsApplication, ProjectionsSettings
from shared.sql import MAX_PARAMETERS, Database
from shared.store import store_env
from tests.support import SECRET

TABLE = (
    "CREATE TABLE IF NOT EXISTS {t}bulk (kind TEXT NOT NULL, id TEXT NOT NULL, note TEXT,"
    " n BIGINT NOT NULL, PRIMARY KEY (kind, id))"
)
# Text that a careless COPY or quoting would mangle.
AWKWARD = ["tab\there", "new\nline", "back\\slash", "quote ' and \"", "ünïcødé ✓", "\\N", ""]


@pytest.fixture
def db(store: dict[str, Any]) -> Any:
    app = ProjectionsApplication(env=store_env(ProjectionsSettings(jwt_secret=SECRET, **store)))
    try:
        database = Database(app)
        database.create([TABLE])
        yield database
    finally:
        app.close()


def _rows(count: int) -> list[tuple[Any, ...]]:
    return [
        ("k", f"{i:05d}", None if i % 3 == 0 else AWKWARD[i % len(AWKWARD)], 2**40 + i)
        for i in range(count)
    ]


def _read(db: Database) -> list[tuple[Any, ...]]:
    with db.transaction(commit=False) as tx:
        rows = tx.execute("SELECT kind, id, note, n FROM {t}bulk ORDER BY id").fetchall()
    return [(r["kind"], r["id"], r["note"], int(r["n"])) for r in rows]


# More rows than one multi-row statement takes.
COUNT = MAX_PARAMETERS // 4 * 2 + 7


@pytest.mark.parametrize("how", ["insert", "append"])
def test_bulk_writes_keep_every_value(db: Database, how: str) -> None:
    rows = _rows(COUNT)
    with db.transaction() as tx:
        if how == "insert":
            tx.insert("INSERT INTO {t}bulk", rows)
        else:
            tx.append("{t}bulk", rows)
    assert _read(db) == rows


def test_insert_with_a_conflict_clause_updates_the_rows_it_meets(db: Database) -> None:
    rows = _rows(COUNT)
    with db.transaction() as tx:
        tx.insert("INSERT INTO {t}bulk", rows[: COUNT // 2])
    changed = [(k, i, f"changed {note}", n + 1) for k, i, note, n in rows]
    with db.transaction() as tx:
        tx.insert(
            "INSERT INTO {t}bulk",
            changed,
            " ON CONFLICT (kind, id) DO UPDATE SET note = excluded.note, n = excluded.n",
        )
    assert _read(db) == changed


@pytest.mark.parametrize("how", ["insert", "append"])
def test_a_failed_transaction_keeps_none_of_the_rows(db: Database, how: str) -> None:
    rows = _rows(50)
    with pytest.raises(PersistenceError), db.transaction() as tx:
        if how == "insert":
            tx.insert("INSERT INTO {t}bulk", rows)
        else:
            tx.append("{t}bulk", rows)
        tx.execute("SELECT * FROM {t}no_such_table")
    assert _read(db) == []

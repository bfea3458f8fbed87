"""The bulk writes of `shared.sql.Tx` on real stores: `insert` (multi-row statements on SQLite,
pipelined statements on PostgreSQL) and `append` (PostgreSQL's COPY) keep every value as it
was, whatever it holds, across more rows than one statement takes, and a failed transaction
keeps none of them. A consumer's batch (`Database.batch`) does the same with its writes sent
in one round trip on PostgreSQL, and its reads see its earlier writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import PersistenceError

from services.projections.main import ProjectionsApplication, ProjectionsSettings
from shared.sql import COPY_UPSERT_ROWS, MAX_PARAMETERS, Database
from shared.store import store_env
from tests.support import SECRET
from tests.system import STORES

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


UPDATE_ON_CONFLICT = " ON CONFLICT (kind, id) DO UPDATE SET note = excluded.note, n = excluded.n"


@pytest.mark.parametrize("count", [COPY_UPSERT_ROWS - 1, COUNT])
@pytest.mark.parametrize("how", ["transaction", "batch"])
def test_upsert_updates_the_rows_it_meets_and_adds_the_others(
    db: Database, count: int, how: str
) -> None:
    rows = _rows(count)
    with db.transaction() as tx:
        tx.insert("INSERT INTO {t}bulk", rows[: count // 2])
    changed = [(k, i, f"changed {note}", n + 1) for k, i, note, n in rows]
    with db.transaction() if how == "transaction" else db.batch() as tx:
        tx.upsert("{t}bulk", changed, UPDATE_ON_CONFLICT)
    assert _read(db) == changed


def test_an_upsert_brings_nothing_of_an_earlier_one(db: Database) -> None:
    """The staging rows of a large upsert on PostgreSQL go at the end of its transaction,
    committed or not: a later upsert on the same connection writes its own rows only."""
    rows = _rows(COUNT)
    first, second, third = rows[:300], rows[300:600], rows[600:900]
    with db.transaction() as tx:
        tx.upsert("{t}bulk", [(k, i, "v1", n) for k, i, _, n in first], UPDATE_ON_CONFLICT)
    with db.transaction() as tx:
        tx.execute("UPDATE {t}bulk SET note = 'v2'")
    with pytest.raises(PersistenceError), db.transaction() as tx:
        tx.upsert("{t}bulk", [(k, i, "v3", n) for k, i, _, n in first], UPDATE_ON_CONFLICT)
        tx.execute("SELECT * FROM {t}no_such_table")
    for _ in range(3):  # every connection of the pool in turn, most likely
        with db.transaction() as tx:
            tx.upsert("{t}bulk", second, UPDATE_ON_CONFLICT)
    with db.transaction() as tx:
        tx.upsert("{t}bulk", third, UPDATE_ON_CONFLICT)
    assert _read(db) == sorted([(k, i, "v2", n) for k, i, _, n in first] + second + third)


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


@pytest.mark.parametrize("how", ["insert", "append", "executemany", "execute"])
def test_a_batch_keeps_every_value(db: Database, how: str) -> None:
    rows = _rows(COUNT if how in ("insert", "append") else 60)
    with db.batch() as tx:
        if how == "insert":
            tx.insert("INSERT INTO {t}bulk", rows)
        elif how == "append":
            tx.append("{t}bulk", rows)
        elif how == "executemany":
            tx.executemany("INSERT INTO {t}bulk VALUES (?, ?, ?, ?)", rows)
        else:
            for row in rows:
                tx.execute("INSERT INTO {t}bulk VALUES (?, ?, ?, ?)", row)
    assert _read(db) == rows


def test_a_read_in_a_batch_sees_the_writes_before_it(db: Database) -> None:
    rows = _rows(10)
    with db.batch() as tx:
        assert tx.execute("SELECT COUNT(*) AS n FROM {t}bulk").fetchone()["n"] == 0
        tx.insert("INSERT INTO {t}bulk", rows[:5])
        assert tx.execute("SELECT COUNT(*) AS n FROM {t}bulk").fetchone()["n"] == 5
        tx.execute("UPDATE {t}bulk SET n = n + 1 WHERE id = ?", (rows[0][1],))
        tx.insert("INSERT INTO {t}bulk", rows[5:])
        found = tx.execute("SELECT n FROM {t}bulk WHERE id = ?", (rows[0][1],)).fetchone()
        assert int(found["n"]) == rows[0][3] + 1
        assert tx.execute("SELECT COUNT(*) AS n FROM {t}bulk").fetchone()["n"] == 10
    assert len(_read(db)) == 10


@pytest.mark.parametrize("read_first", [False, True])
def test_a_failed_batch_keeps_none_of_its_writes(db: Database, read_first: bool) -> None:
    rows = _rows(50)
    with db.batch() as tx:
        tx.insert("INSERT INTO {t}bulk", rows[:1])
    # The second statement meets a key already stored: the first must not stay either.
    with pytest.raises(PersistenceError), db.batch() as tx:
        tx.insert("INSERT INTO {t}bulk", rows[1:])
        if read_first:
            tx.execute("SELECT COUNT(*) AS n FROM {t}bulk").fetchone()
        tx.insert("INSERT INTO {t}bulk", rows[:1])
    assert _read(db) == rows[:1]
    # An error raised by the code in the batch, before anything was sent, keeps nothing too.
    with pytest.raises(RuntimeError), db.batch() as tx:
        tx.insert("INSERT INTO {t}bulk", rows[1:])
        if read_first:
            tx.execute("SELECT COUNT(*) AS n FROM {t}bulk").fetchone()
        raise RuntimeError("the projector failed")
    assert _read(db) == rows[:1]
    # The connections are left clean: the next batch works.
    with db.batch() as tx:
        tx.insert("INSERT INTO {t}bulk", rows[1:])
    assert _read(db) == rows


def test_a_write_in_a_batch_has_no_rows_to_fetch(db: Database) -> None:
    """On PostgreSQL a batch holds its writes until the end, so asking one for rows is an error
    (the cursor would otherwise still hold an earlier read's rows); SQLite runs it at once."""
    with db.batch() as tx:
        assert tx.execute("SELECT COUNT(*) AS n FROM {t}bulk").fetchone()["n"] == 0
        tx.execute("INSERT INTO {t}bulk VALUES (?, ?, ?, ?) RETURNING id", ("k", "a", None, 1))
        if db.postgres:
            with pytest.raises(PersistenceError, match="only a SELECT"):
                tx.fetchone()
        else:
            assert tx.fetchone()["id"] == "a"


@contextmanager
def round_trips(db: Database) -> Iterator[list[int]]:
    """Counts the server's ReadyForQuery messages (one per round trip that waits for the
    server) on the pool's connections, from libpq's protocol trace."""
    pool = db._datastore.pool  # type: ignore[attr-defined]
    found: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        traced: list[tuple[psycopg.Connection[Any], Any]] = []
        conns = []
        while True:  # every idle connection of the pool, each traced to a file of its own
            try:
                conns.append(pool.getconn(timeout=0.1))
            except Exception:
                break
        for i, conn in enumerate(conns):
            f = open(os.path.join(tmp, f"{i}.trace"), "w")
            conn.pgconn.trace(f.fileno())
            traced.append((conn, f))
            pool.putconn(conn)
        try:
            yield found
        finally:
            for conn, f in traced:
                conn.pgconn.untrace()
                f.close()
            for _, f in traced:
                with open(f.name) as trace:
                    found.append(sum("ReadyForQuery" in line for line in trace))


@pytest.mark.parametrize("store", STORES[1:], indirect=True)  # round trips: PostgreSQL
def test_a_batch_is_one_round_trip(db: Database) -> None:
    rows = _rows(40)
    with round_trips(db) as counted:
        with db.batch() as tx:
            tx.insert("INSERT INTO {t}bulk", rows[:20])
            tx.append("{t}bulk", rows[20:])
            tx.executemany("UPDATE {t}bulk SET n = n + 1 WHERE id = ?", [(r[1],) for r in rows])
            tx.execute("UPDATE {t}bulk SET note = ? WHERE id = ?", ("last", rows[0][1]))
    assert sum(counted) == 1
    # A read before the writes is a round trip of its own.
    with round_trips(db) as counted:
        with db.batch() as tx:
            tx.execute("SELECT COUNT(*) AS n FROM {t}bulk").fetchone()
            tx.executemany("UPDATE {t}bulk SET n = n + 1 WHERE id = ?", [(r[1],) for r in rows])
    assert sum(counted) == 2
    assert [n for *_, n in _read(db)] == [r[3] + 2 for r in rows]

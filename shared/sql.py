"""Tables of our own beside a service's events: one small portable layer over the event
store's own connection pool, for SQLite and PostgreSQL alike.

Consumers keep their views (a catalogue, an inbox of what they applied) in the same database
as the service's events, through the same pool the `eventsourcing` recorders use. Statements
are written once with `?` placeholders and `{t}` in front of every table name; `Database`
turns them into the dialect at hand (`%s` and the service's schema on PostgreSQL).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import Any

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError, ProgrammingError
from eventsourcing.postgres import PostgresDatastore

from shared.store import ServiceApplication, SQLiteStore, dialect, roll_back_if_open

# Values per statement of `Tx.insert`: well within both drivers' limits (SQLite 32,766,
# PostgreSQL 65,535), and large enough that a batch takes a few statements.
MAX_PARAMETERS = 4096

# From this many rows on, `Tx.upsert` on PostgreSQL goes through COPY and a staging table:
# for 1,000 rows it took a quarter of the client's CPU of a pipelined statement per row
# (2.5 to 2.9 against 10 to 12.8 ms) and less time in all (9.3 against 11.5 to 14.4 ms).
COPY_UPSERT_ROWS = 100


@contextmanager
def _store_failures() -> Iterator[None]:
    """The driver's "the database is not there" errors as the library's `PersistenceError`s.

    Code that applies an event inside a transaction tells a store failure (retry the event
    later) from an event its projector cannot apply (set the event aside) by `PersistenceError`.
    The drivers raise their own classes mid-transaction — a PostgreSQL server killed under a
    consumer raises `psycopg.errors.AdminShutdown` — and the library translates them only when
    the transaction ends: too late for that choice."""
    try:
        yield
    except (psycopg.OperationalError, sqlite3.OperationalError) as e:
        raise OperationalError(str(e)) from e
    except (psycopg.InterfaceError, sqlite3.InterfaceError) as e:
        raise InterfaceError(str(e)) from e


def _multi_row(
    head: str, rows: Sequence[Sequence[Any]], tail: str, placeholder: str
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """`head VALUES (…), (…) tail` statements of up to `MAX_PARAMETERS` values for rows of the
    same width, with their values in order."""
    if not rows:
        return
    width = len(rows[0])
    one = "(" + ", ".join([placeholder] * width) + ")"
    per = max(1, MAX_PARAMETERS // width)
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        yield (
            f"{head} VALUES {', '.join([one] * len(chunk))}{tail}",
            tuple(chain.from_iterable(chunk)),
        )


class Tx:
    """A cursor inside one transaction."""

    def __init__(self, db: Database, cursor: Any) -> None:
        self._db = db
        self._cursor = cursor

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Tx:
        with _store_failures():
            self._cursor.execute(self._db.sql(statement), tuple(params))
        return self

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with _store_failures():
                self._cursor.executemany(self._db.sql(statement), [tuple(r) for r in rows])

    def insert(self, head: str, rows: Sequence[Sequence[Any]], tail: str = "") -> None:
        """`head VALUES (…) tail` for many rows of the same width, the fastest way each store
        takes them: on SQLite, multi-row statements of up to `MAX_PARAMETERS` values; on
        PostgreSQL, one statement per row, pipelined (measured faster there than multi-row
        statements). `tail` (an `ON CONFLICT` clause) must not meet the same key twice."""
        if not rows:
            return
        width = len(rows[0])
        if self._db.postgres:
            self.executemany(f"{head} VALUES ({', '.join('?' * width)}){tail}", rows)
            return
        for statement, values in _multi_row(self._db.sql(head), rows, self._db.sql(tail), "?"):
            with _store_failures():
                self._cursor.execute(statement, values)

    def upsert(self, table: str, rows: Sequence[Sequence[Any]], conflict: str) -> None:
        """Rows into `table` (every column, in order), `conflict` (an `ON CONFLICT` clause)
        deciding about keys already there; no key may come twice in `rows`. Many rows on
        PostgreSQL go by COPY into a temporary table shaped like `table` (emptied at every
        commit) and from there in one `INSERT … SELECT`; otherwise as `insert`."""
        if not (self._db.postgres and len(rows) >= COPY_UPSERT_ROWS):
            self.insert(f"INSERT INTO {table}", rows, conflict)
            return
        staging = "okr_staging_" + table.removeprefix("{t}")
        with _store_failures():
            self._cursor.execute(
                self._db.sql(
                    f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table})"
                    " ON COMMIT DELETE ROWS"
                )
            )
            with self._cursor.copy(f"COPY {staging} FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            # The table and the clause are the code's own, never input.
            insert = f"INSERT INTO {table} SELECT * FROM {staging}{conflict}"  # noqa: S608
            self._cursor.execute(self._db.sql(insert))

    def append(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        """Add rows to `table` (every column, in order): PostgreSQL's COPY, the fastest way in
        there; multi-row INSERTs on SQLite."""
        if not rows:
            return
        if not self._db.postgres:
            self.insert(f"INSERT INTO {table}", rows)
            return
        # COPY takes the rows as they are: no statement, no conflict handling.
        with _store_failures(), self._cursor.copy(self._db.sql(f"COPY {table} FROM STDIN")) as copy:
            for row in rows:
                copy.write_row(row)

    def fetchone(self) -> Any:
        with _store_failures():
            return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        with _store_failures():
            return list(self._cursor.fetchall())


class ScriptTx(Tx):
    """A transaction on PostgreSQL whose writes travel together: each is bound on the client
    into the text of a statement and held, and at the end BEGIN, the writes and COMMIT go to
    the server as one script in one round trip. A consumer's batch is a read or two and a
    dozen writes (states, history, audit, inbox rows); as statements of their own, each of
    those writes was a round trip, and on a busy process each round trip is a wait for the
    server and then for the GIL.

    A read is sent at once, after the writes held before it (with BEGIN), so it sees them, as
    it would in a plain transaction. A read before any write runs outside the transaction, as
    a statement of its own: under READ COMMITTED (the default), each statement of a
    transaction sees what was committed when it started anyway. Values are bound by psycopg
    (`ClientCursor.mogrify`), which quotes them for the connection's settings."""

    def __init__(self, db: Database, conn: psycopg.Connection[Any], *, synced: bool = True) -> None:
        super().__init__(db, conn.cursor())
        self._client = psycopg.ClientCursor(conn)
        self._begin = ["BEGIN"] if synced else ["BEGIN", UNSYNCED_COMMIT]
        self._held: list[str] = []
        self._open = False  # BEGIN was sent
        self._fetchable = False  # the last statement was a read, sent

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Tx:
        sql = self._db.sql(statement)
        if not _reads(sql):
            self._held.append(self._client.mogrify(sql, tuple(params)))
            self._fetchable = False
            return self
        self._send()
        with _store_failures():
            self._cursor.execute(sql, tuple(params))
        self._fetchable = True
        return self

    def fetchone(self) -> Any:
        self._check_fetchable()
        return super().fetchone()

    def fetchall(self) -> list[Any]:
        self._check_fetchable()
        return super().fetchall()

    def _check_fetchable(self) -> None:
        if not self._fetchable:
            # A held statement has no rows yet; reading the cursor would give an older one's.
            raise ProgrammingError("only a SELECT has rows to fetch in a batch")

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        sql = self._db.sql(statement)
        self._held.extend(self._client.mogrify(sql, tuple(r)) for r in rows)
        self._fetchable = False

    def insert(self, head: str, rows: Sequence[Sequence[Any]], tail: str = "") -> None:
        """Multi-row statements, as on SQLite (`tail` must not meet the same key twice)."""
        for statement, values in _multi_row(self._db.sql(head), rows, self._db.sql(tail), "%s"):
            self._held.append(self._client.mogrify(statement, values))
        self._fetchable = False

    def upsert(self, table: str, rows: Sequence[Sequence[Any]], conflict: str) -> None:
        self.insert(f"INSERT INTO {table}", rows, conflict)

    def append(self, table: str, rows: Sequence[Sequence[Any]]) -> None:
        self.insert(f"INSERT INTO {table}", rows)

    def _send(self, *, commit: bool = False) -> None:
        script = self._held if self._open else [*self._begin, *self._held]
        if commit:
            if not self._open and not self._held:
                return  # nothing was written
            script = [*script, "COMMIT"]
        elif not self._held:
            return
        self._held = []
        with _store_failures():
            # No parameters: the simple query protocol, which takes many statements at once.
            self._cursor.execute(";\n".join(script).encode())
        self._open = not commit

    def commit(self) -> None:
        self._send(commit=True)


# A PostgreSQL transaction whose commit returns before the server has flushed its log: lost
# if the server crashes before it does (within `wal_writer_delay`, 200 ms by default), never
# by the client's own crash; for this transaction only.
UNSYNCED_COMMIT = "SET LOCAL synchronous_commit TO OFF"


def _reads(sql: str) -> bool:
    return sql.lstrip()[:6].upper() == "SELECT"


class Database:
    def __init__(self, app: ServiceApplication) -> None:
        datastore = app.recorder.datastore  # type: ignore[attr-defined]
        self._datastore = datastore
        self.postgres = isinstance(datastore, PostgresDatastore)
        self._deferrable = self.postgres or isinstance(datastore, SQLiteStore)
        self._schema: str | None = datastore.schema if self.postgres else None
        self._cache: dict[str, str] = {}

    def sql(self, statement: str) -> str:
        translated = self._cache.get(statement)
        if translated is None:
            translated = dialect(statement, self._schema)
            self._cache[statement] = translated
        return translated

    @property
    def defers_sync(self) -> bool:
        """Whether `synced=False` commits return before the disk has them, so that what
        depends on their durability waits for `sync` (SQLite's `synchronous=NORMAL`,
        PostgreSQL's `synchronous_commit = off`, for those transactions only)."""
        return self._deferrable

    def sync(self) -> None:
        """SQLite: make every transaction committed so far durable, an fsync of the
        write-ahead log (blocking: a worker thread's). PostgreSQL: nothing here, since only a
        commit that writes waits for the server's flush (and so for every commit before it);
        the consumers' sync is such a commit of their own (`Inbox.sync`)."""
        if self._deferrable and not self.postgres:
            self._datastore.sync()

    @contextmanager
    def transaction(self, *, commit: bool = True, synced: bool = True) -> Iterator[Tx]:
        """One transaction; on SQLite, writers are serialised by the store's pool.
        `synced=False`: the commit does not wait for the disk; see `sync`."""
        if synced or not self._deferrable:
            with self._datastore.transaction(commit=commit) as cursor:
                yield Tx(self, cursor)
            return
        if self.postgres:
            with self._datastore.transaction(commit=commit) as cursor:
                tx = Tx(self, cursor)
                tx.execute(UNSYNCED_COMMIT)
                yield tx
            return
        with self._datastore.transaction(commit=commit, synced=False) as cursor:
            yield Tx(self, cursor)

    @contextmanager
    def batch(self, *, synced: bool = True) -> Iterator[Tx]:
        """A transaction that commits, for a consumer's batch: on PostgreSQL its writes go to
        the server at the end, in one round trip with BEGIN and COMMIT (`ScriptTx`)."""
        if not self.postgres:
            with self.transaction(synced=synced) as tx:
                yield tx
            return
        with self._datastore.get_connection() as conn:
            tx = ScriptTx(self, conn, synced=synced)
            try:
                yield tx
                tx.commit()
            except BaseException:
                roll_back_if_open(conn)
                raise

    def create(self, statements: Sequence[str]) -> None:
        with self.transaction() as tx:
            for statement in statements:
                tx.execute(statement)

    def placeholders(self, n: int) -> str:
        return ", ".join("?" * n)

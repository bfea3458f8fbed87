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
from typing import Any

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError
from eventsourcing.postgres import PostgresDatastore

from shared.store import ServiceApplication, dialect


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

    def fetchone(self) -> Any:
        with _store_failures():
            return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        with _store_failures():
            return list(self._cursor.fetchall())


class Database:
    def __init__(self, app: ServiceApplication) -> None:
        datastore = app.recorder.datastore  # type: ignore[attr-defined]
        self._datastore = datastore
        self.postgres = isinstance(datastore, PostgresDatastore)
        self._schema: str | None = datastore.schema if self.postgres else None
        self._cache: dict[str, str] = {}

    def sql(self, statement: str) -> str:
        translated = self._cache.get(statement)
        if translated is None:
            translated = dialect(statement, self._schema)
            self._cache[statement] = translated
        return translated

    @contextmanager
    def transaction(self, *, commit: bool = True) -> Iterator[Tx]:
        """One transaction; on SQLite, writers are serialised by the store's pool."""
        with self._datastore.transaction(commit=commit) as cursor:
            yield Tx(self, cursor)

    def create(self, statements: Sequence[str]) -> None:
        with self.transaction() as tx:
            for statement in statements:
                tx.execute(statement)

    def placeholders(self, n: int) -> str:
        return ", ".join("?" * n)

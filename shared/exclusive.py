"""One process per service and store.

A service keeps state in memory beside its store (the aggregate cache, the catalogue it
consumes) and runs the one relay of that store, so a second process on the same store would
split the catalogue's events with the first and relay beside it (docs/architecture.md, "Known
limits"). Each service therefore holds a lock on its store while it runs, and one that finds
the lock taken does not start: it says which process holds it, and its supervisor tries again
later, so a second replica waits for the first to go.

- SQLite: `flock` on `<OKR_DATA_DIR>/<service>.lock`, which names the holder. The kernel lets
  it go when the process ends, however it ends.
- PostgreSQL: a session advisory lock keyed by the service's schema, on a connection of its
  own whose `application_name` names the holder. The server lets it go when that connection
  ends. If the connection is lost (PostgreSQL restarted, the network cut), `check` takes the
  lock again on a new one; if another process took it meanwhile, this one was replaced and
  must stop (`on_lost`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import psycopg

from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

# How often a PostgreSQL lock's connection is checked while the service runs.
CHECK_EVERY_S = 5.0


class StoreInUse(RuntimeError):
    """Another process holds the service's store."""


def holder_name(service: str) -> str:
    return f"okr-{service} pid {os.getpid()} on {socket.gethostname()}"[:63]


class FileStoreLock:
    """An exclusive `flock` on a file beside the SQLite store."""

    def __init__(self, path: Path, service: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StoreInUse(
                f"{holder or 'another process'} runs the {service} service on {path.parent}:"
                " one process per service and store"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_name(service).encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing lets the lock go
            self._fd = None


class PostgresStoreLock:
    """A session advisory lock on a connection of its own."""

    def __init__(
        self, url: str, schema: str, service: str, on_lost: Callable[[], None] | None = None
    ) -> None:
        self._url = url
        self._key = f"okr-store:{schema}"
        self._service = service
        self._on_lost = on_lost or stop_this_process
        self._lost = False
        conn = self._connect()
        try:
            if not self._take(conn):
                holder = self._holder(conn)
                # Held a moment ago and by no one now: let go meanwhile (a predecessor that
                # just stopped). Once more, then.
                if holder is not None or not self._take(conn):
                    raise StoreInUse(
                        f"{holder or 'another process'} runs the {service} service on"
                        f" schema {schema!r}: one process per service and store"
                    )
        except BaseException:
            conn.close()
            raise
        self._conn: psycopg.Connection | None = conn

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=5,
            application_name=holder_name(self._service),
            # A holder whose machine died or was cut off must not keep the lock for the two
            # hours of the default keepalive: the server probes an idle session after 10 s
            # and ends it after 3 unanswered probes, 5 s apart; this side gives up on an
            # unanswered check after 10 s.
            options="-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5"
            " -c tcp_keepalives_count=3",
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
            tcp_user_timeout=10_000,
        )

    def _take(self, conn: psycopg.Connection) -> bool:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (self._key,)
        ).fetchone()
        return bool(row and row[0])

    def _holder(self, conn: psycopg.Connection) -> str | None:
        """Who holds the lock, as its connection names itself."""
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND l.classid::bigint = (hashtextextended(%s, 0) >> 32) & 4294967295"
            " AND l.objid::bigint = hashtextextended(%s, 0) & 4294967295",
            (self._key, self._key),
        ).fetchone()
        return str(row[0]) if row and row[0] else None

    def check(self) -> None:
        """Called every few seconds while the service runs (blocking: on a worker thread).
        A lock whose connection was lost is taken again; one that another process took in
        the meantime means this process was replaced: `on_lost` stops it."""
        if self._lost:
            return
        if self._conn is not None:
            try:
                self._conn.execute("SELECT 1")
                return
            except psycopg.Error:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
                self._conn = None
        try:
            conn = self._connect()
        except psycopg.Error as e:
            # PostgreSQL is away: so are the store calls, and no other process can take the
            # lock on it either. Try again at the next check.
            log.warning("store lock of %s: PostgreSQL unreachable (%s)", self._service, e)
            return
        try:
            taken = self._take(conn)
            holder = None if taken else self._holder(conn)
        except psycopg.Error as e:
            conn.close()
            log.warning("store lock of %s: not taken again yet (%s)", self._service, e)
            return
        if taken:
            self._conn = conn
            log.warning("store lock of %s: its connection was lost, taken again", self._service)
            return
        conn.close()
        self._lost = True
        log.error(
            "store lock of %s: %s took the store while this process was cut off from"
            " PostgreSQL; stopping this process",
            self._service,
            holder or "another process",
        )
        self._on_lost()

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                # Let go at once: the session's end would too, but the server notices a
                # closed connection a moment later, and a successor started right away would
                # find the lock still held.
                self._conn.execute(
                    "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (self._key,)
                )
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


StoreLock = FileStoreLock | PostgresStoreLock


def stop_this_process() -> None:
    """Stop as the supervisor would: SIGTERM, a graceful shutdown."""
    signal.raise_signal(signal.SIGTERM)


def lock_store(settings: ServiceSettings, on_lost: Callable[[], None] | None = None) -> StoreLock:
    """Take the service's store for this process, or raise `StoreInUse`."""
    if settings.database_url is None:
        return FileStoreLock(settings.data_dir / f"{settings.service}.lock", settings.service)
    return PostgresStoreLock(
        settings.database_url.get_secret_value(),
        settings.database_schema,
        settings.service,
        on_lost,
    )

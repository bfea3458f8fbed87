"""A COMMIT whose answer is lost: PostgreSQL committed, the connection broke before the client
heard so. The store retries the insert (as the library does); the retry must recognise its own
events rather than take them for another writer's, or the writer would run the command again
and record it twice. A consumer's batch is handed back and delivered again; the inbox must
then find it applied, neither applying it twice on the states it keeps in memory nor getting
stuck on the rows it wrote. A real PostgreSQL behind a proxy that cuts the connection right
after the server's "COMMIT" answer, before the client reads it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import date
from typing import Any
from urllib.parse import urlparse
from uuid import UUID

import pytest
from eventsourcing.persistence import PersistenceError, StoredEvent

from services.goals import application as uc
from services.goals.application import GoalsApplication
from services.goals.domain import Cycle, KeyResult
from services.goals.main import GoalsSettings
from services.projections.main import ProjectionsApplication, ProjectionsSettings
from services.projections.views import Views
from shared.consumer import Inbox, Outcome
from shared.domain import CommandContext, command_context
from shared.sql import Database
from shared.store import PostgresStoreRecorder, store_env
from shared.writer import CommandWriter
from tests.integration.test_views_batches import KR, PROGRESS, _checked_in, _opened, _views
from tests.integration.test_writer import setup_key_result
from tests.support import SECRET
from tests.system import store_for

pytestmark = pytest.mark.postgres

CTX = CommandContext(
    actor="alice", correlation_id="c", causation_id="r", roles=frozenset({"admin"})
)


class CommitAnswerCutter:
    """A TCP proxy to PostgreSQL. Once armed, the next server message "CommandComplete COMMIT"
    is not passed on: the proxy closes both sides instead, so the commit happened and the
    client sees only a broken connection."""

    TAG = b"C\x00\x00\x00\x0bCOMMIT\x00"

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.cut = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for src, dst, answers in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, answers), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        tail = b""
        try:
            while data := src.recv(65536):
                if answers and self.armed.is_set():
                    window = tail + data
                    if self.TAG in window and self._take_arm():
                        return  # the answer is dropped; `finally` cuts both sides
                    tail = window[-len(self.TAG) :]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _take_arm(self) -> bool:
        with self._lock:
            if not self.armed.is_set():
                return False
            self.armed.clear()
            self.cut += 1
            return True


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def proxy(
    request: pytest.FixtureRequest, tmp_path: Any
) -> Iterator[tuple[CommitAnswerCutter, dict[str, Any]]]:
    store = store_for(request, tmp_path)
    url = urlparse(store["database_url"])
    cutter = CommitAnswerCutter(url.hostname or "127.0.0.1", url.port or 5432)
    netloc = f"{url.username or 'postgres'}@127.0.0.1:{cutter.port}"
    yield cutter, {**store, "database_url": url._replace(netloc=netloc).geturl()}
    cutter.close()


@pytest.fixture
def app(
    proxy: tuple[CommitAnswerCutter, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[GoalsApplication]:
    monkeypatch.setenv("PGSSLMODE", "disable")  # the proxy reads the protocol in clear
    monkeypatch.setattr("shared.store.INSERT_RETRY_WAIT_S", 0.01, raising=False)
    settings = GoalsSettings(jwt_secret="s" * 32, **proxy[1])
    application = GoalsApplication(store_env(settings))
    yield application
    application.close()


@pytest.fixture
async def writer(app: GoalsApplication) -> Any:
    w = CommandWriter(app, "goals", cache_size=0)
    w.start()
    yield w
    w.stop()


def _stored(app: GoalsApplication, aggregate_id: UUID) -> list[Any]:
    return list(app.recorder.select_events(aggregate_id))


async def test_an_update_whose_commit_answer_was_lost_is_recorded_once(
    app: GoalsApplication,
    writer: CommandWriter,
    proxy: tuple[CommitAnswerCutter, dict[str, Any]],
) -> None:
    cutter = proxy[0]
    kr_id = UUID(await setup_key_result(writer))
    before = app.repository.get(kr_id).version

    cutter.armed.set()
    result = await writer.execute(
        lambda uow: uc.adjust_target(uow, kr_id, 42, "lost answer", None), CTX
    )

    assert cutter.cut == 1, "the proxy cut the connection after the COMMIT"
    key_result = app.repository.get(kr_id)
    assert isinstance(key_result, KeyResult)
    assert key_result.version == before + 1, "recorded once, not again on the retry"
    assert result.version == before + 1
    assert key_result.target == 42
    last = _stored(app, kr_id)[-1]
    assert last.originator_version == before + 1
    # The answer's position is the committed event's own notification id.
    notification = app.recorder.select_notifications(start=None, limit=10_000)[-1]
    assert (notification.originator_id, notification.originator_version) == (kr_id, before + 1)
    assert result.body["position"] == f"goals:{notification.id}"


async def test_a_creation_whose_commit_answer_was_lost_creates_one_aggregate(
    app: GoalsApplication,
    writer: CommandWriter,
    proxy: tuple[CommitAnswerCutter, dict[str, Any]],
) -> None:
    cutter = proxy[0]
    cutter.armed.set()
    result = await writer.execute(
        lambda uow: uc.schedule_cycle(uow, "Q", date(2027, 1, 1), date(2027, 3, 31)), CTX
    )
    assert cutter.cut == 1
    notifications = app.recorder.select_notifications(start=None, limit=100)
    assert len(notifications) == 1, "one cycle, not a second one from a re-run"
    assert notifications[0].originator_id == UUID(result.body["id"])
    assert isinstance(app.repository.get(UUID(result.body["id"])), Cycle)
    assert result.body["position"] == f"goals:{notifications[0].id}"


def test_only_these_very_events_count_as_committed(app: GoalsApplication) -> None:
    """After a lost answer, events under the same keys but another state are another writer's:
    a true conflict."""
    recorder = app.recorder
    assert isinstance(recorder, PostgresStoreRecorder)
    with command_context(CTX):
        cycle = Cycle.schedule("Q", date(2027, 1, 1), date(2027, 3, 31))
    app.save(cycle)
    stored = _stored(app, cycle.id)
    assert recorder._ids_if_committed(stored) == [
        n.id for n in recorder.select_notifications(start=None, limit=10)
    ]
    other = [
        StoredEvent(s.originator_id, s.originator_version, s.topic, s.state + b" ") for s in stored
    ]
    assert recorder._ids_if_committed(other) is None
    missing = [StoredEvent(s.originator_id, 99, s.topic, s.state) for s in stored]
    assert recorder._ids_if_committed(missing) is None


@pytest.fixture
def views_app(
    proxy: tuple[CommitAnswerCutter, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[ProjectionsApplication]:
    monkeypatch.setenv("PGSSLMODE", "disable")
    settings = ProjectionsSettings(jwt_secret=SECRET, **proxy[1])
    application = ProjectionsApplication(env=store_env(settings))
    yield application
    application.close()


def test_a_views_batch_whose_commit_answer_was_lost_is_found_applied_when_it_comes_again(
    views_app: ProjectionsApplication, proxy: tuple[CommitAnswerCutter, dict[str, Any]]
) -> None:
    cutter = proxy[0]
    inbox = Inbox(Database(views_app), "views", Views())
    inbox.setup()
    first = [_opened(KR, PROGRESS), _checked_in(KR, 1, 10.0, 2, PROGRESS)]
    assert inbox.process(first)[0] == [Outcome.APPLIED] * 2
    batch = [_checked_in(KR, 2, 20.0, 3, PROGRESS), _checked_in(KR, 3, 30.0, 4, PROGRESS)]

    cutter.armed.set()
    with pytest.raises(PersistenceError):
        inbox.process(batch)
    assert cutter.cut == 1, "the proxy cut the connection after the COMMIT"

    # Delivered again: it was committed, so it is recognised, not applied a second time
    # (which failed on the history's and the audit's keys, again at every delivery).
    assert inbox.process(batch)[0] == [Outcome.DUPLICATE] * 2
    # What comes next applies on the states the batch left, not on those held before it.
    assert inbox.process([_checked_in(KR, 4, 40.0, 5, PROGRESS)])[0] == [Outcome.APPLIED]
    views = _views(views_app)
    assert views["progress"]["check_in_count"] == 4
    assert views["progress"]["current"] == 40.0
    assert views["history"] == 5  # opened and four check-ins, each once
    assert views["audit"] == [1, 2, 3, 4, 5]

"""A realistic history written straight into the goals and checkins stores.

Over HTTP a million events take far too long, so the generator runs the services' own use
cases (`services/goals/application.py`, `services/checkins/application.py`) inside units of
work, exactly as the writer does, and saves many commands' events per transaction: the same
events, the same command context on each (an admin plans, each key result's owner checks in,
one request id per command), the same lookups, the same snapshots. The relays, consumers and
services then take the stores as if every command had come over HTTP. Nothing here writes the
checkins service's catalogue: it builds that itself from the goals events on the stream.

`python -m bench.dataset [sqlite|postgres] [events] [--verify]` generates a small history,
prints the rate, and with `--verify` checks it against the real services (slow: it starts
NATS and three service processes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import httpx
import nats as nats_py
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate

from bench.common import SECRET, Nats, Store, free_port, wait_port
from services.checkins import application as checkins_uc
from services.checkins.application import CheckinsApplication
from services.checkins.domain import KeyResultProgress, progress_id_for
from services.goals import application as goals_uc
from services.goals.application import GoalsApplication
from services.goals.domain import Cycle, KeyResult, Objective
from shared.auth import mint_token
from shared.catalogue import Catalogue, CycleEntry, KeyResultEntry, ObjectiveEntry
from shared.domain import CommandContext, command_context
from shared.nats import ensure_stream
from shared.store import Document, Lookup, ServiceApplication, collect, store_env
from shared.writer import UnitOfWork

# Only the stores are opened here; the settings want a NATS URL all the same.
UNUSED_NATS_URL = "nats://127.0.0.1:4222"
ADMIN = "bench-admin"
NOTES = [
    "steady progress",
    "slower than planned this week",
    "customer pilot went well",
    "waiting on the platform team",
    "back on track after the release",
    "ahead of plan",
]
BLOCKERS = ["staffing", "a dependency on another team", "budget approval", "data access"]

App = TypeVar("App", bound=ServiceApplication)


@dataclass
class Dataset:
    cycle_id: UUID
    objective_ids: list[UUID]
    key_result_ids: list[UUID]
    goals_events: int  # events written to the goals store
    checkins_events: int  # events written to the checkins store
    started_at: datetime  # timestamp of the first event (for as_of queries)
    ended_at: datetime
    check_ins: int = 0  # check-ins written so far (round-robin over the key results)
    seconds: float = 0.0  # time spent generating, all calls together
    # What the generator keeps between calls (catalogue, progress aggregates), valid while
    # nobody else writes to the stores; otherwise `add_check_ins` reloads it.
    _state: _State | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def events(self) -> int:
        return self.goals_events + self.checkins_events


@dataclass
class _State:
    store: tuple[str, str | None]
    catalogue: Catalogue
    progress: dict[UUID, Aggregate]  # KeyResultProgress by id; a UnitOfWork's batch
    goals_position: int
    checkins_position: int


class _GeneratingCheckins(CheckinsApplication):
    """The checkins application, snapshotting every interval's version, all of a batch's
    snapshots in one transaction after the batch (the service writes each in the transaction
    of the save that reached it, from the aggregate as saved)."""

    name = "checkins"  # the library names tables (PostgreSQL) after it, not after the class

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env)
        self.due: list[tuple[UUID, int]] = []

    def _take_snapshots(self, processing_event: Any) -> None:
        for event in processing_event.events:
            aggregate = processing_event.aggregates.get(event.originator_id)
            interval = self.snapshotting_intervals.get(type(aggregate))
            if interval is not None and event.originator_version % interval == 0:
                self.due.append((event.originator_id, event.originator_version))

    def take_due_snapshots(self) -> None:
        if not self.due or self.snapshots is None:
            return
        snapshots = []
        for aggregate_id, version in self.due:
            # From the store, as the library does: the generator's copy keeps no check-ins.
            aggregate: Any = self.repository.get(
                aggregate_id, version=version, projector_func=_project
            )
            snapshots.append(type(aggregate).Snapshot.take(aggregate))
        self.snapshots.put(snapshots)
        self.due = []


def _project(aggregate: Any, events: Iterable[Any]) -> Any:
    """The library's `project_aggregate` without its `assert isinstance(event, <runtime
    Protocol>)`, which costs more than applying the event on Python 3.11."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def _save(app: ServiceApplication, aggregates: Iterable[Aggregate], **kwargs: Any) -> list[Any]:
    """`app.save(*aggregates, **kwargs)` with the library's own, synchronous snapshots."""
    processing = collect(list(aggregates), **kwargs)
    recordings: list[Any] = app._record(processing)
    # The library's own snapshots, each at its interval's version (the services write theirs
    # in the save's transaction): every interval gets its snapshot.
    Application._take_snapshots(app, processing)
    app._notify(recordings)
    return recordings


def open_app(store: Store, service: str, cls: type[App]) -> App:
    """The service's application on the run's store, configured as the service configures it."""
    return cls(store_env(store.settings(service, UNUSED_NATS_URL)))


@contextlib.contextmanager
def opened(store: Store, service: str, cls: type[App]) -> Iterator[App]:
    app = open_app(store, service, cls)
    try:
        yield app
    finally:
        app.close()


def _context(actor: str, *, admin: bool = False) -> CommandContext:
    # As over HTTP: a fresh request id per command, which is also its correlation id.
    request_id = str(uuid.uuid4())
    roles = frozenset({"admin"}) if admin else frozenset()
    return CommandContext(actor, request_id, request_id, roles=roles)


def max_position(app: ServiceApplication) -> int:
    return int(app.recorder.max_notification_id() or 0)


class _Saver:
    """Saves pending aggregates and lookups about every `batch_events` events."""

    def __init__(self, app: ServiceApplication, batch_events: int, label: str, progress: bool):
        self.app = app
        self.batch_events = max(1, batch_events)
        self.label = label
        self.progress = progress
        self.touched: dict[UUID, Aggregate] = {}
        self.lookups: list[Lookup] = []
        self.documents: list[Document] = []
        self.pending = 0
        self.saved = 0
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.started = time.perf_counter()

    def add(
        self,
        agg: Aggregate,
        events: int,
        lookups: list[Lookup],
        documents: Iterable[Document] = (),
    ) -> None:
        self.touched[agg.id] = agg
        self.lookups.extend(lookups)
        self.documents.extend(documents)
        self.pending += events
        if self.pending >= self.batch_events:
            self.flush()

    def flush(self) -> None:
        if not self.touched:
            return
        recordings = _save(
            self.app, self.touched.values(), lookups=self.lookups, documents=self.documents
        )
        if recordings:
            # A batch is recorded aggregate by aggregate, not in the order of the events' times.
            times = [r.domain_event.timestamp for r in recordings]
            self.first = min(times) if self.first is None else min(self.first, *times)
            self.last = max(times) if self.last is None else max(self.last, *times)
        self.saved += len(recordings)
        if isinstance(self.app, _GeneratingCheckins):
            self.app.take_due_snapshots()
        self.touched = {}
        self.lookups = []
        self.documents = []
        self.pending = 0
        if self.progress:
            rate = self.saved / max(time.perf_counter() - self.started, 1e-9)
            print(f"\r{self.label}: {self.saved} events, {rate:,.0f}/s", end="", file=sys.stderr)

    def done(self) -> None:
        self.flush()
        if self.progress and self.saved:
            print(file=sys.stderr)


# --- goals --------------------------------------------------------------------------------


def _plan(
    app: GoalsApplication,
    catalogue: Catalogue,
    *,
    key_results: int,
    team: str,
    owner: str,
    per_objective: int,
    batch_events: int,
    progress: bool,
) -> tuple[Cycle, list[UUID], list[UUID], _Saver]:
    """A started cycle, its objectives and key results: each command as the HTTP routes run
    it; the cycle's two commands alone, the rest batched."""
    saver = _Saver(app, batch_events, "goals", progress)
    known: dict[UUID, Aggregate] = {}
    starts_on = date.today() - timedelta(days=14)
    with command_context(_context(ADMIN, admin=True)):
        uow = UnitOfWork(app, None, known)
        cycle = goals_uc.schedule_cycle(
            uow, f"Bench {uuid.uuid4().hex[:8]}", starts_on, starts_on + timedelta(days=91)
        )
    known[cycle.id] = cycle
    saver.add(cycle, 1, [])
    saver.flush()
    with command_context(_context(ADMIN, admin=True)):
        goals_uc.start_cycle(UnitOfWork(app, None, known), cycle.id, None)
    saver.add(cycle, 1, [])
    saver.flush()
    catalogue.cycles[cycle.id] = CycleEntry(
        cycle.id, cycle.name, cycle.starts_on, cycle.ends_on, "active"
    )

    objective_ids: list[UUID] = []
    key_result_ids: list[UUID] = []
    objective: Objective | None = None
    for i in range(key_results):
        if i % max(1, per_objective) == 0:
            with command_context(_context(ADMIN, admin=True)):
                objective = goals_uc.create_objective(
                    UnitOfWork(app, None, known),
                    cycle_id=cycle.id,
                    title=f"Objective {len(objective_ids) + 1:05d}",
                    description="Generated for the benchmarks",
                    owner=owner,
                    team=team,
                    parent_id=None,
                )
            known[objective.id] = objective
            objective_ids.append(objective.id)
            catalogue.objectives[objective.id] = ObjectiveEntry(
                objective.id, cycle.id, objective.title, objective.owner, objective.team, False
            )
            saver.add(objective, 1, [])
        assert objective is not None
        with command_context(_context(ADMIN, admin=True)):
            kr: KeyResult = goals_uc.define_key_result(
                UnitOfWork(app, None, known),
                objective.id,
                title=f"Key result {i + 1:07d}",
                kind="number",
                unit="points",
                start=0.0,
                target=100.0,
                weight=1.0,
                owner=owner,
            )
        key_result_ids.append(kr.id)
        catalogue.key_results[kr.id] = _kr_entry(kr)
        saver.add(kr, 1, [])
    saver.done()
    return cycle, objective_ids, key_result_ids, saver


def _kr_entry(kr: KeyResult) -> KeyResultEntry:
    return KeyResultEntry(
        kr.id,
        kr.objective_id,
        kr.cycle_id,
        kr.title,
        kr.kind,
        kr.unit,
        kr.start,
        kr.target,
        kr.weight,
        kr.owner,
        kr.removed,
        "",
    )


def _load_catalogue(app: GoalsApplication, dataset: Dataset) -> Catalogue:
    """What the checkins service's catalogue holds of the dataset, read back from the goals
    store (when the generator's own copy may be stale)."""
    catalogue = Catalogue()
    cycle: Any = app.repository.get(dataset.cycle_id)
    catalogue.cycles[cycle.id] = CycleEntry(
        cycle.id, cycle.name, cycle.starts_on, cycle.ends_on, cycle.status
    )
    for objective_id in dataset.objective_ids:
        o: Any = app.repository.get(objective_id)
        catalogue.objectives[o.id] = ObjectiveEntry(
            o.id, o.cycle_id, o.title, o.owner, o.team, o.archived
        )
    for kr_id in dataset.key_result_ids:
        catalogue.key_results[kr_id] = _kr_entry(app.repository.get(kr_id))
    return catalogue


# --- check-ins ----------------------------------------------------------------------------


def _value(number: int, noise: float) -> float:
    # Climbs towards the target week by week, with some wobble.
    return round(min(100.0, max(0.0, 100 * (1 - 0.93**number) + noise)), 1)


def _write_check_ins(
    app: _GeneratingCheckins,
    state: _State,
    dataset: Dataset,
    count: int,
    batch_events: int,
    progress: bool,
) -> _Saver:
    rng = random.Random(f"{dataset.cycle_id}:{dataset.check_ins}")
    krs = dataset.key_result_ids
    entries = [state.catalogue.key_results[k] for k in krs]
    progress_ids = [progress_id_for(k) for k in krs]
    saver = _Saver(app, batch_events, "checkins", progress)
    first = dataset.check_ins
    for i in range(first, first + count):
        k = i % len(krs)
        existing = state.progress.get(progress_ids[k])
        number = (existing.count if existing is not None else 0) + 1  # type: ignore[attr-defined]
        blockers = [rng.choice(BLOCKERS)] if rng.random() < 0.1 else []
        uow = UnitOfWork(app, None, state.progress)
        with command_context(_context(entries[k].owner)):
            agg = checkins_uc.check_in(
                uow,
                state.catalogue,
                key_result_id=krs[k],
                value=_value(number, rng.uniform(-4, 4)),
                confidence=min(10, max(0, round(rng.gauss(7, 2)))),
                note=f"week {number}: {rng.choice(NOTES)}",
                blockers=blockers,
                expected=None,
            )
        if existing is None:
            state.progress[agg.id] = agg
        saver.add(agg, 1 if existing is not None else 2, uow.lookups, uow.documents.values())
    saver.done()
    return saver


def _load_progress(app: CheckinsApplication, dataset: Dataset) -> dict[UUID, Aggregate]:
    found: dict[UUID, Aggregate] = {}
    for kr_id in dataset.key_result_ids:
        try:
            agg: Any = app.repository.get(progress_id_for(kr_id))
        except AggregateNotFoundError:
            continue
        assert isinstance(agg, KeyResultProgress)
        found[agg.id] = agg
    return found


# --- the API ------------------------------------------------------------------------------


def generate(
    store: Store,
    *,
    key_results: int,
    check_ins: int,
    team: str = "bench",
    owner: str = "bench-owner",
    key_results_per_objective: int = 10,
    batch_events: int = 2000,
    progress: bool = False,
) -> Dataset:
    """A started cycle with `key_results` key results (number, 0 → 100) in objectives of
    `team`, and `check_ins` check-ins spread round-robin over them. Blocking: from async
    code, run it with `asyncio.to_thread`."""
    if key_results < 1:
        raise ValueError("key_results must be at least 1")
    started = time.perf_counter()
    catalogue = Catalogue()
    catalogue.is_current = lambda: True
    with opened(store, "goals", GoalsApplication) as goals:
        cycle, objective_ids, key_result_ids, saver = _plan(
            goals,
            catalogue,
            key_results=key_results,
            team=team,
            owner=owner,
            per_objective=key_results_per_objective,
            batch_events=batch_events,
            progress=progress,
        )
        goals_position = max_position(goals)
    assert saver.first is not None and saver.last is not None
    dataset = Dataset(
        cycle_id=cycle.id,
        objective_ids=objective_ids,
        key_result_ids=key_result_ids,
        goals_events=saver.saved,
        checkins_events=0,
        started_at=saver.first,
        ended_at=saver.last,
    )
    with opened(store, "checkins", CheckinsApplication) as checkins:
        dataset._state = _State(
            (str(store.data_dir), store.database_url),
            catalogue,
            {},
            goals_position,
            max_position(checkins),
        )
    dataset.seconds = time.perf_counter() - started
    if check_ins:
        add_check_ins(store, dataset, check_ins, batch_events=batch_events, progress=progress)
    return dataset


def add_check_ins(
    store: Store,
    dataset: Dataset,
    check_ins: int,
    *,
    batch_events: int = 2000,
    progress: bool = False,
) -> Dataset:
    """`check_ins` more check-ins, continuing the round-robin; updates `dataset` and returns
    it. Works after other writers too (check-ins over HTTP), by reloading from the stores."""
    started = time.perf_counter()
    with (
        opened(store, "goals", GoalsApplication) as goals,
        opened(store, "checkins", _GeneratingCheckins) as checkins,
    ):
        state = dataset._state
        goals_position = max_position(goals)
        if (
            state is None
            or state.store != (str(store.data_dir), store.database_url)
            or state.goals_position != goals_position
            or state.checkins_position != max_position(checkins)
        ):
            catalogue = _load_catalogue(goals, dataset)
            catalogue.is_current = lambda: True
            state = _State(
                (str(store.data_dir), store.database_url),
                catalogue,
                _load_progress(checkins, dataset),
                goals_position,
                max_position(checkins),
            )
            dataset._state = state
        saver = _write_check_ins(checkins, state, dataset, check_ins, batch_events, progress)
        state.checkins_position = max_position(checkins)
    dataset.check_ins += check_ins
    dataset.checkins_events += saver.saved
    if saver.last is not None:
        dataset.ended_at = max(dataset.ended_at, saver.last)
    dataset.seconds += time.perf_counter() - started
    return dataset


def check_ins_for_events(key_results: int, events: int) -> int:
    """How many check-ins make about `events` checkins events over `key_results` key results
    (each key result's first check-in also opens its progress: two events)."""
    if events <= 2 * key_results:
        return max(0, events // 2)
    return events - key_results


# --- checking a dataset against the real services -----------------------------------------


def _expected(store: Store, dataset: Dataset) -> dict[str, tuple[int, float | None]]:
    """Each key result's check-in count and latest value, read back from the checkins store."""
    with opened(store, "checkins", CheckinsApplication) as checkins:
        found: dict[str, tuple[int, float | None]] = {}
        for kr_id in dataset.key_result_ids:
            agg = checkins.progress(kr_id)
            if agg is None:
                found[str(kr_id)] = (0, None)
            else:
                newest = checkins.check_ins(agg, limit=1)
                found[str(kr_id)] = (agg.count, newest[0]["value"] if newest else None)
    return found


def _tree_counts(tree: dict[str, Any]) -> dict[str, tuple[int, float | None]]:
    return {
        kr["id"]: (kr["check_in_count"], kr["current"])
        for o in tree["objectives"]
        for kr in o["key_results"]
    }


def verify(store: Store, dataset: Dataset, base: Path, timeout: float = 600) -> dict[str, Any]:
    """Start NATS and the goals, checkins and projections services on the store, and check
    that the projections show every key result with its latest check-in (now and `as_of` the
    end of the history) and that a new check-in over HTTP is accepted. Raises AssertionError."""
    expected = _expected(store, dataset)
    with opened(store, "goals", GoalsApplication) as goals:
        goals_position = max_position(goals)
    nats = Nats(base)
    nats.start()
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    report: dict[str, Any] = {}
    try:

        async def declare() -> None:
            nc = await nats_py.connect(nats.url)
            try:
                await ensure_stream(nc.jetstream(), store.settings("goals", nats.url))
            finally:
                await nc.close()

        asyncio.run(declare())
        ports = {s: free_port() for s in ("goals", "checkins", "projections")}
        env = store.environment(nats.url)
        env |= {f"OKR_{s.upper()}_PORT": str(p) for s, p in ports.items()}
        root = Path(__file__).resolve().parent.parent
        started = time.perf_counter()
        for service in ports:
            log = open(base / f"verify-{service}.log", "wb")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", f"services.{service}"],
                    env=env,
                    cwd=root,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        for port in ports.values():
            wait_port(port, 60)
        url = {s: f"http://127.0.0.1:{p}" for s, p in ports.items()}
        headers = {"Authorization": f"Bearer {mint_token(SECRET, ADMIN, roles=['admin'])}"}
        deadline = time.monotonic() + timeout
        with httpx.Client(headers=headers, timeout=30) as http:

            def until_ok(method: str, target: str, **kwargs: Any) -> httpx.Response:
                while True:
                    r = http.request(method, target, **kwargs)
                    if r.status_code < 300 or time.monotonic() > deadline:
                        return r
                    time.sleep(0.2)

            r = until_ok(
                "GET",
                f"{url['checkins']}/v1/catalogue",
                params={"min_position": f"goals:{goals_position}"},
            )
            assert r.status_code == 200, r.text
            catalogue = r.json()
            assert catalogue["key_results"] == len(dataset.key_result_ids), catalogue
            report["catalogue_caught_up_s"] = time.perf_counter() - started
            positions = [f"goals:{goals_position}"]
            if dataset.checkins_events:
                with opened(store, "checkins", CheckinsApplication) as checkins:
                    positions.append(f"checkins:{max_position(checkins)}")
            r = until_ok(
                "GET", f"{url['projections']}/v1/cycles", params={"min_position": positions}
            )
            assert r.status_code == 200, r.text
            report["projections_caught_up_s"] = time.perf_counter() - started
            assert str(dataset.cycle_id) in [c["id"] for c in r.json()["items"]], r.text
            tree_url = f"{url['projections']}/v1/cycles/{dataset.cycle_id}/okrs"
            tree = http.get(tree_url).json()
            assert len(tree["objectives"]) == len(dataset.objective_ids)
            assert _tree_counts(tree) == expected, "the tree differs from the store"
            as_of = dataset.ended_at.astimezone(UTC).isoformat()
            past = http.get(tree_url, params={"as_of": as_of}).json()
            got = _tree_counts(past)
            diff = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
            assert not diff, f"the tree as_of {as_of} differs: {list(diff.items())[:3]}"

            kr_id = dataset.key_result_ids[0]
            count = expected[str(kr_id)][0]
            r = http.post(
                f"{url['checkins']}/v1/key-results/{kr_id}/check-ins",
                json={"value": 42.5, "confidence": 7, "note": "over HTTP"},
            )
            assert r.status_code == 201, r.text
            answer = r.json()
            # Numbered after the generated ones: the service sees them as its own.
            r = http.get(f"{url['checkins']}/v1/check-ins/{answer['id']}")
            assert r.status_code == 200 and r.json()["number"] == count + 1, r.text
            r = until_ok(
                "GET", tree_url, params={"min_position": [answer["position"], positions[0]]}
            )
            assert r.status_code == 200, r.text
            assert _tree_counts(r.json())[str(kr_id)] == (count + 1, 42.5)
            report["http_check_in"] = answer
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
        nats.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", nargs="?", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("events", nargs="?", type=int, default=10_000)
    parser.add_argument("--key-results", type=int, default=500)
    parser.add_argument("--verify", action="store_true")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="okr-dataset-") as tmp,
        Store.create(args.kind, Path(tmp)) as store,
    ):
        goals_events = 2 + -(-args.key_results // 10) + args.key_results
        check_ins = check_ins_for_events(args.key_results, args.events - goals_events)
        dataset = generate(store, key_results=args.key_results, check_ins=check_ins)
        print(
            f"{args.kind}: {dataset.events} events ({dataset.goals_events} goals, "
            f"{dataset.checkins_events} checkins) in {dataset.seconds:.2f} s: "
            f"{dataset.events / dataset.seconds:,.0f} events/s"
        )
        before = dataset.seconds
        add_check_ins(store, dataset, check_ins)
        print(
            f"add_check_ins: {check_ins} more in {dataset.seconds - before:.2f} s: "
            f"{check_ins / (dataset.seconds - before):,.0f} events/s"
        )
        if args.verify:
            print("verify:", verify(store, dataset, Path(tmp)))


if __name__ == "__main__":
    main()

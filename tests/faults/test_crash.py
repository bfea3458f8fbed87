"""The crash matrix and the NATS outage, with every part a real process.

Clients keep sending check-ins (checkins service), target adjustments (goals) and reflections
(reviews), each with an `Idempotency-Key`, retrying until answered. Meanwhile each process in
turn — every service (and so every consumer: the catalogues, the carry-over policy, the
projections), NATS, and PostgreSQL — is killed with SIGKILL at a random moment and started
again. Then, once everything has caught up:

- every command answered 2xx is in its service's store exactly once, and nothing else is;
- every stored event is on the stream exactly once (by source and sequence, and by event id);
- every one is applied exactly once in the projections (check-in histories, the audit trail,
  the review).

In CI each process is killed once per store (`OKR_FAULTS_ROUNDS=1`); `make soak` runs more
rounds in a random order. The seed is printed and recorded: `OKR_FAULTS_SEED` replays a run.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from services.checkins.application import CheckinsApplication
from services.checkins.main import CheckinsSettings
from services.goals.application import GoalsApplication
from services.goals.main import GoalsSettings
from services.reviews.application import ReviewsApplication
from services.reviews.main import ReviewsSettings
from shared.store import store_env
from tests.faults.load import Ledger, Load, Scenario
from tests.faults.processes import ProcessSystem, postgres_binaries
from tests.faults.report import record
from tests.support import SECRET, declare_stream, read_stream, token
from tests.system import REQUIRE_POSTGRES

ROUNDS = int(os.environ.get("OKR_FAULTS_ROUNDS", "1"))
OUTAGE_S = float(os.environ.get("OKR_FAULTS_OUTAGE_S", "30"))

pytestmark = [pytest.mark.timeout(300 + 120 * ROUNDS + 2 * OUTAGE_S), pytest.mark.e2e]
SERVICE_TARGETS = ["goals", "checkins", "reviews", "projections"]
ADMIN = {"Authorization": f"Bearer {token('setup')}"}
STORES = {"goals": GoalsApplication, "checkins": CheckinsApplication, "reviews": ReviewsApplication}
SETTINGS = {"goals": GoalsSettings, "checkins": CheckinsSettings, "reviews": ReviewsSettings}


def _seed() -> int:
    return int(os.environ.get("OKR_FAULTS_SEED") or random.SystemRandom().randrange(1 << 30))


def _with_postgres(store: str) -> bool:
    if store == "sqlite":
        return False
    if postgres_binaries() is None:
        if REQUIRE_POSTGRES:
            pytest.fail("PostgreSQL server binaries are required (OKR_REQUIRE_POSTGRES)")
        pytest.skip("no PostgreSQL server binaries to run a private server")
    return True


async def _start(base: Path, store: str, **env: str) -> ProcessSystem:
    system = ProcessSystem.create(base, with_postgres=_with_postgres(store))
    for svc in system.services.values():
        svc.env |= env
    if system.postgres is not None:
        await asyncio.to_thread(system.postgres.init)
        await asyncio.to_thread(system.postgres.start)
    system.nats.start()
    await declare_stream(system.nats.url)
    for svc in system.services.values():
        svc.start()
    for svc in system.services.values():
        await asyncio.to_thread(svc.wait_ready)
    return system


async def _ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


async def _scenario(system: ProcessSystem, key_results: int = 4) -> Scenario:
    urls = {name: svc.url for name, svc in system.services.items()}
    async with httpx.AsyncClient(headers=ADMIN, timeout=30) as c:
        body = {"name": "Q1", "starts_on": "2027-01-01", "ends_on": "2027-03-31"}
        cycle = (await _ok(await c.post(f"{urls['goals']}/v1/cycles", json=body)))["id"]
        await _ok(await c.post(f"{urls['goals']}/v1/cycles/{cycle}/start"))
        body = {"cycle_id": cycle, "title": "Happy customers", "owner": "ana", "team": "platform"}
        objective = (await _ok(await c.post(f"{urls['goals']}/v1/objectives", json=body)))["id"]
        krs = []
        for i in range(key_results):
            body = {"title": f"KR {i}", "kind": "number", "start": 0, "target": 100, "owner": "ana"}
            answer = await _ok(
                await c.post(f"{urls['goals']}/v1/objectives/{objective}/key-results", json=body)
            )
            krs.append(answer["id"])
        at = answer["position"]
        # Both readers of the goals events must know the key results before the load starts.
        await _ok(await c.get(f"{urls['checkins']}/v1/catalogue", params={"min_position": at}))
        review = await _ok(
            await c.post(
                f"{urls['reviews']}/v1/reviews",
                params={"min_position": at},
                json={"cycle_id": cycle, "team": "platform"},
            )
        )
    return Scenario(cycle, krs, review["id"])


# --- what is where ------------------------------------------------------------------------


def _stored(base: Path, name: str, postgres_url: str | None) -> list[Any]:
    """Every event in a service's store, decoded (read beside the running service)."""
    settings = SETTINGS[name](
        jwt_secret=SECRET,
        data_dir=base / "data",
        database_url=postgres_url,
    )
    app = STORES[name](env=store_env(settings))
    try:
        notifications = app.recorder.select_notifications(start=1, limit=10_000_000)
        return [(n.id, app.mapper.to_domain_event(n)) for n in notifications]
    finally:
        app.close()


def _type(event: Any) -> str:
    return type(event).__qualname__


async def _settle(system: ProcessSystem, ledger: Ledger) -> dict[str, int]:
    """Wait until every store's last event is applied by the projections; the positions."""
    positions = {}
    for name in STORES:
        events = await asyncio.to_thread(
            _stored, system.base, name, system.postgres.url if system.postgres else None
        )
        positions[name] = max(n for n, _ in events)
    params = [("min_position", f"{k}:{v}") for k, v in positions.items()]
    url = f"{system.services['projections'].url}/v1/audit"
    async with httpx.AsyncClient(headers=ADMIN, timeout=30) as c:
        deadline = time.monotonic() + 120
        while True:
            r = await c.get(url, params=params)
            if r.status_code == 200:
                return positions
            assert time.monotonic() < deadline, f"projections never caught up: {r.text}"
            await asyncio.sleep(0.5)


async def _verify(system: ProcessSystem, scenario: Scenario, ledger: Ledger) -> dict[str, Any]:
    """Everything answered is stored, published and applied once; nothing else. Figures."""
    pg = system.postgres.url if system.postgres else None
    positions = await _settle(system, ledger)
    stored = {name: await asyncio.to_thread(_stored, system.base, name, pg) for name in STORES}

    # 1. The stores: each answered command once, nothing unanswered.
    checked_in = [e for _, e in stored["checkins"] if _type(e) == "KeyResultProgress.CheckedIn"]
    assert Counter(str(e.check_in_id) for e in checked_in) == Counter(ledger.check_ins.keys()), (
        "check-ins stored differ from those answered"
    )
    adjusted = Counter(
        str(e.originator_id) for _, e in stored["goals"] if _type(e) == "KeyResult.TargetAdjusted"
    )
    assert adjusted == ledger.targets, "target adjustments stored differ from those answered"
    reflected = [e for _, e in stored["reviews"] if _type(e) == "CycleReview.Reflected"]
    assert Counter(str(e.reflection_id) for e in reflected) == Counter(ledger.reflections.keys())

    # 2. The stream: every stored event once, and nothing else.
    total = sum(len(events) for events in stored.values())
    messages = await read_stream(system.nats.url, total, timeout=60)
    envelopes = [json.loads(m.data) for m in messages]
    by_position = Counter((e["source"].rsplit("/", 1)[-1], e["sequence"]) for e in envelopes)
    doubled = [k for k, n in by_position.items() if n > 1]
    assert not doubled, f"published twice: {doubled[:5]}"
    expected = {(name, n) for name, events in stored.items() for n, _ in events}
    assert set(by_position) == expected, (
        f"missing on the stream: {sorted(expected - set(by_position))[:5]}; "
        f"unknown: {sorted(set(by_position) - expected)[:5]}"
    )
    assert len({e["id"] for e in envelopes}) == len(envelopes)

    # 3. The views: each event applied once.
    projections = system.services["projections"].url
    params = [("min_position", f"{k}:{v}") for k, v in positions.items()]
    async with httpx.AsyncClient(headers=ADMIN, timeout=30) as c:
        for kr in scenario.key_results:
            r = await _ok(
                await c.get(f"{projections}/v1/key-results/{kr}/check-ins", params=params)
            )
            seen = Counter(item["id"] for item in r["items"])
            wanted = Counter(i for i, k in ledger.check_ins.items() if k == kr)
            assert seen == wanted, f"check-in history of {kr} differs"
            numbers = [item["number"] for item in r["items"]]
            assert numbers == list(range(1, len(numbers) + 1))
            audit = await c.get(
                f"{projections}/v1/audit.csv",
                params=[*params, ("entity", kr)],
            )
            assert audit.status_code == 200, audit.text
            rows = [
                row
                for row in csv.DictReader(io.StringIO(audit.text))
                if row["event_type"].split(".")[-1] == "target_adjusted"
            ]
            assert len(rows) == ledger.targets[kr], f"audit trail of {kr}: {len(rows)} rows"
        review = await _ok(
            await c.get(f"{projections}/v1/reviews/{scenario.review_id}", params=params)
        )
        texts = Counter(x["text"] for x in review["reflections"])
        assert texts == Counter(ledger.reflections.values()), "reflections in the views differ"
    return {
        "events_stored": total,
        "events_on_stream": len(envelopes),
        "check_ins": len(ledger.check_ins),
        "target_adjustments": sum(ledger.targets.values()),
        "reflections": len(ledger.reflections),
    }


# --- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_crash_matrix(store: str, tmp_path: Path) -> None:
    seed = _seed()
    print(f"crash matrix on {store}: seed {seed}")
    rng = random.Random(seed)
    system = await _start(tmp_path, store)
    try:
        scenario = await _scenario(system)
        load = Load({n: s.url for n, s in system.services.items()}, scenario)
        started = time.monotonic()
        load.start(seed)
        targets = [*SERVICE_TARGETS, "nats"] + (["postgres"] if system.postgres else [])
        kills = []
        exits: list[str] = []  # services that stopped themselves, started again
        for _ in range(ROUNDS):
            order = targets[:]
            if ROUNDS > 1:
                rng.shuffle(order)
            for target in order:
                await asyncio.sleep(rng.uniform(1.0, 3.0))
                answered = load.ledger.answered
                t0 = time.monotonic()
                system.kill(target)
                await asyncio.sleep(rng.uniform(0.0, 1.5))
                await asyncio.to_thread(system.restart, target)
                kills.append((target, round(time.monotonic() - t0, 2), answered))
                exits += await asyncio.to_thread(system.restart_exited)
        await asyncio.sleep(2.0)
        await load.stop()
        elapsed = time.monotonic() - started
        exits += await asyncio.to_thread(system.restart_exited)
        figures = await _verify(system, scenario, load.ledger)
    except BaseException:
        print(system.logs())
        raise
    finally:
        await asyncio.to_thread(system.stop)
    ledger = load.ledger
    record(
        "crash",
        f"{store}: kill -9 of {', '.join(dict.fromkeys(t for t, _, _ in kills))}",
        "nothing lost or doubled",
        kills=len(kills),
        load_s=round(elapsed, 1),
        commands_answered=ledger.answered,
        per_s=round(ledger.answered / elapsed, 1),
        attempts=ledger.attempts,
        retries=ledger.retries,
        replayed=ledger.replayed,
        longest_wait_s=round(ledger.longest_wait_s, 1),
        stopped_themselves=len(exits),
        seed=seed,
        **figures,
    )


@pytest.mark.parametrize("store", ["sqlite"])
async def test_nats_outage_under_load(store: str, tmp_path: Path) -> None:
    """NATS away for OUTAGE_S seconds: commands keep succeeding; the backlog drains in order."""
    seed = _seed()
    system = await _start(tmp_path, store)
    try:
        scenario = await _scenario(system)
        load = Load({n: s.url for n, s in system.services.items()}, scenario)
        load.start(seed)
        await asyncio.sleep(2.0)
        before = load.ledger.answered
        system.kill("nats")
        down_at = time.monotonic()
        await asyncio.sleep(OUTAGE_S)
        during = load.ledger.answered - before
        system.restart("nats")
        back_at = time.monotonic()
        await asyncio.sleep(2.0)
        await load.stop()
        figures = await _verify(system, scenario, load.ledger)
        drained_s = time.monotonic() - back_at
        # In order: each source's events are on the stream in their stored order.
        messages = await read_stream(system.nats.url, figures["events_stored"], timeout=30)
        envelopes = [json.loads(m.data) for m in messages]
        for source in ("goals", "checkins", "reviews"):
            sequences = [e["sequence"] for e in envelopes if e["source"].endswith(source)]
            assert sequences == sorted(sequences), f"{source} published out of order"
        # Per aggregate, versions follow each other.
        versions: dict[UUID, list[int]] = {}
        for e in envelopes:
            versions.setdefault(UUID(e["subject"]), []).append(e["aggregateversion"])
        assert all(v == sorted(v) for v in versions.values())
    except BaseException:
        print(system.logs())
        raise
    finally:
        await asyncio.to_thread(system.stop)
    assert during > 0, "no command succeeded while NATS was down"
    record(
        "outage",
        f"{store}: NATS stopped for {OUTAGE_S:.0f} s under load",
        "commands kept succeeding; backlog drained in order",
        answered_while_down=during,
        per_s_while_down=round(during / (back_at - down_at), 1),
        drained_within_s=round(drained_s, 1),
        **figures,
    )

"""What the consumers of a running system have made of the events, read in full, so a fault
test can compare it before and after an injection; and waiting until they are done.

`snapshot` reads every view a consumer feeds: the projections' reads (the audit trail, each
cycle's OKR tree, each key result's check-in history, the meetings, each review) as JSON,
and for every consumer of every service the rows of its tables (the inbox, the checkins and
reviews catalogues, the reviews' latest check-ins, the projections' tables) and the
catalogue and progress each service keeps in memory. `settle` waits, on positions and on
JetStream's own counts, never on time, until every consumer has applied and acknowledged
everything.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from shared.consumer import Consumer
from tests.support import RunningService

# The services whose events the system's consumers follow, in the order positions are given.
SOURCES = ("goals", "checkins", "reviews")
_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\S+)")


def consumers(services: Mapping[str, RunningService]) -> list[tuple[str, Consumer]]:
    return [(name, c) for name, svc in services.items() for c in svc.runtime.consumers]


async def positions(services: Mapping[str, RunningService]) -> dict[str, int]:
    """The highest position each running service has stored."""
    found = {}
    for name in SOURCES:
        if name in services:
            n = await asyncio.to_thread(services[name].runtime.app.recorder.max_notification_id)
            found[name] = int(n or 0)
    return found


def min_positions(at: Mapping[str, int]) -> list[str]:
    return [f"{name}:{n}" for name, n in at.items() if n > 0 and name != "projections"]


async def quiet(services: Mapping[str, RunningService], timeout: float = 30.0) -> None:
    """Wait until JetStream has nothing left for any consumer: nothing undelivered and
    nothing delivered but unacknowledged (an early event handed back counts as waiting)."""
    deadline = time.monotonic() + timeout
    for name, consumer in consumers(services):
        js = await services[name].runtime.link.wait()
        while True:
            info = await js.consumer_info(consumer.stream, consumer.durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            assert time.monotonic() < deadline, (
                f"{consumer.durable}: {info.num_pending} pending, "
                f"{info.num_ack_pending} unacknowledged after {timeout}s"
            )
            await asyncio.sleep(0.05)


async def applied(
    services: Mapping[str, RunningService], at: Mapping[str, int], timeout: float = 20.0
) -> None:
    """Wait until every consumer has applied the events of the services it follows up to
    the positions `at`."""
    for _, consumer in consumers(services):
        for source, n in at.items():
            if n and consumer.follows(source):
                assert await consumer.wait_for(f"okr/{source}", n, timeout), (
                    f"{consumer.durable} stuck at {consumer.positions}, waiting for {source}:{n}"
                )


async def settle(services: Mapping[str, RunningService]) -> dict[str, int]:
    """Wait until every event stored so far is applied by every consumer and acknowledged,
    including events that consumers caused in turn (the goals service's carry-over policy).
    Returns the positions the system settled at."""
    while True:
        at = await positions(services)
        await applied(services, at)
        await quiet(services)
        if await positions(services) == at:
            return at


# --- reading everything -------------------------------------------------------------------


async def _get(svc: RunningService, path: str, **params: Any) -> Any:
    r = await svc.client.get(path, params=params)
    assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
    return r.json()


async def _audit(svc: RunningService, wait: list[str]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500, "min_position": wait}
    while True:
        page = await _get(svc, "/v1/audit", **params)
        entries.extend(page["items"])
        if not page["next_cursor"]:
            return entries
        params = {**params, "cursor": page["next_cursor"]}


async def projection_reads(svc: RunningService, at: Mapping[str, int]) -> dict[str, Any]:
    """Every read of the projections service about what its audit trail names."""
    wait = min_positions(at)
    audit = await _audit(svc, wait)

    def ids(kind: str) -> list[str]:
        return sorted({e["entity_id"] for e in audit if e["entity_type"] == kind})

    teams = sorted({e["changes"]["team"]["to"] for e in audit if "team" in e["changes"]})

    async def each(path: str, keys: list[str]) -> dict[str, Any]:
        return {k: await _get(svc, path.format(k), min_position=wait) for k in keys}

    return {
        "audit": audit,
        "trees": await each("/v1/cycles/{}/okrs", ids("cycle")),
        "check_ins": await each("/v1/key-results/{}/check-ins", ids("key_result")),
        "meetings": await each("/v1/teams/{}/check-in-meetings", teams),
        "reviews": await each("/v1/reviews/{}", ids("cycle_review")),
    }


def _rows(consumer: Consumer) -> dict[str, list[str]]:
    """Every row of the consumer's inbox and of its projector's tables, sorted."""
    inbox: Any = consumer.inbox
    projector = getattr(inbox, "projector", None)
    statements = list(projector.tables()) if projector is not None else []
    tables = ["{t}inbox_versions", "{t}inbox_positions"]
    tables += [m.group(1) for s in statements if (m := _TABLE.search(s))]
    dump: dict[str, list[str]] = {}
    with inbox.db.transaction(commit=False) as tx:
        for table in tables:
            rows = tx.execute(f"SELECT * FROM {table}").fetchall()  # our own table names
            if table.endswith(("inbox_versions", "inbox_positions")):
                rows = [r for r in rows if r["consumer"] == consumer.name]
            dump[table] = sorted(json.dumps(dict(r), sort_keys=True, default=str) for r in rows)
    return dump


def _memory(svc: RunningService) -> dict[str, Any]:
    """The catalogue and latest check-ins a service keeps in memory, if it has them."""
    found: dict[str, Any] = {}
    catalogue = svc.runtime.parts.get("catalogue")
    if catalogue is not None:
        for name in ("cycles", "objectives", "key_results"):
            entries = getattr(catalogue, name)
            found[name] = {str(k): asdict(v) for k, v in sorted(entries.items(), key=str)}
    progress = svc.runtime.parts.get("progress")
    if progress is not None:
        found["latest"] = {str(k): asdict(v) for k, v in sorted(progress.latest.items(), key=str)}
    return json.loads(json.dumps(found, default=str))


async def snapshot(services: Mapping[str, RunningService], at: Mapping[str, int]) -> dict[str, Any]:
    """Everything the consumers made of the events up to `at` (see the module's doc)."""
    view: dict[str, Any] = {"stored": dict(await positions(services))}
    for name, svc in services.items():
        part: dict[str, Any] = {
            "tables": {c.durable: await asyncio.to_thread(_rows, c) for c in svc.runtime.consumers},
            "memory": _memory(svc),
        }
        if name == "projections":
            part["reads"] = await projection_reads(svc, at)
        if name == "checkins":
            status = await _get(svc, "/v1/catalogue", min_position=f"goals:{at['goals']}")
            part["catalogue"] = {k: v for k, v in status.items() if k not in ("pending", "current")}
        view[name] = part
    return view


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Where two snapshots differ, as paths (for an assertion message)."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after), key=str):
            found += differences(before.get(key), after.get(key), f"{path}/{key}")
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        found = []
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            found += differences(b, a, f"{path}[{i}]")
        return found
    return [] if before == after else [f"{path}: {before!r:.200} -> {after!r:.200}"]


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    diff = differences(before, after)
    assert not diff, "views changed:\n" + "\n".join(diff[:20])


# --- metrics ------------------------------------------------------------------------------


async def consumer_counts(
    svc: RunningService, metric: str, services: Mapping[str, RunningService]
) -> dict[str, float]:
    """`okr_consumer_<metric>_total` per consumer (`<service>-<name>`), from `/metrics`, for
    the consumers of `services` only: services run in the test process share one registry,
    which also holds the series of consumers that earlier tests ran (a rebuild's, say)."""
    r = await svc.client.get("/metrics")
    assert r.status_code == 200
    ours = {c.durable for _, c in consumers(services)}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        if family.name != f"okr_consumer_{metric}":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = f"{sample.labels['service']}-{sample.labels['consumer']}"
                if key in ours:
                    counts[key] = sample.value
    return counts


def grown(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, int]:
    return {k: int(after.get(k, 0) - before.get(k, 0)) for k in sorted(set(before) | set(after))}

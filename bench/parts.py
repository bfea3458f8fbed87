"""8. The parts, in this process: what a check-in costs the writer and an event costs the
views, by batch size, and what one thread hand-off costs on this machine.

The HTTP figures say how close the system comes to its ceilings; these say where its time
goes, measured the same way on every host, without the noise of five processes sharing two
cores. Each is CPU time, of the thread that does the work:

- the checkins service's `CommandWriter` and `CheckinsApplication` on the run's store, fed
  check-ins on the key results of a generated cycle (their aggregates warm in its cache) by
  the event loop, N at a time, as N concurrent requests would: the writer thread's CPU per
  check-in, with its system time (the store's writes and syncs) and the event loop's part;
- the projections' `Inbox` and `Views` (indexed, as live) applying check-in events in
  batches of N, each batch then synced as the consumer does: that thread's CPU per event,
  with its system time (the WAL checkpoints run on a thread of their own, not counted);
- an event loop handing a call to a worker thread and awaiting it (`run_in_executor`): what
  the writer's and the consumers' hand-offs cost here, which differs between hosts more
  than Python's speed does.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import dataset
from bench.common import Figure, Store
from services.checkins import application as uc
from services.checkins.application import CheckinsApplication
from services.checkins.domain import progress_id_for
from services.goals.application import GoalsApplication
from services.projections.main import ProjectionsApplication
from services.projections.views import Tables, Views
from shared.consumer import Inbox, Received
from shared.domain import CommandContext
from shared.sql import Database
from shared.store import store_env
from shared.writer import CommandWriter

UNUSED_NATS_URL = "nats://127.0.0.1:4222"
TICK = os.sysconf("SC_CLK_TCK")


def _thread_cpu(thread: threading.Thread) -> tuple[float, float]:
    """(CPU, of which system) seconds of another thread of this process: the CPU from its
    clock (to the nanosecond), the system part from /proc (to the clock tick)."""
    assert thread.ident is not None and thread.native_id is not None
    cpu = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    return cpu, int(stat.rsplit(")", 1)[1].split()[12]) / TICK


@contextmanager
def _this_thread() -> Iterator[dict[str, float]]:
    """CPU seconds of the calling thread while the block runs: `cpu` and `system`."""
    used: dict[str, float] = {}
    before = resource.getrusage(resource.RUSAGE_THREAD)
    yield used
    after = resource.getrusage(resource.RUSAGE_THREAD)
    used["system"] = after.ru_stime - before.ru_stime
    used["cpu"] = used["system"] + after.ru_utime - before.ru_utime


# --- the writer -----------------------------------------------------------------------------


async def writer(
    store: Store, key_results: int, batches: list[int], check_ins: int
) -> list[Figure]:
    data = await asyncio.to_thread(dataset.generate, store, key_results=key_results, check_ins=0)
    with dataset.opened(store, "goals", GoalsApplication) as goals:
        catalogue = dataset._load_catalogue(goals, data)
    catalogue.is_current = lambda: True
    app = dataset.open_app(store, "checkins", CheckinsApplication)
    w = CommandWriter(app, "checkins")
    w.start()
    rng = random.Random(1)
    krs = data.key_result_ids
    owners = {k: catalogue.key_results[k].owner for k in krs}

    async def check_in(kr: uuid.UUID) -> None:
        request = str(uuid.uuid4())
        await w.execute(
            lambda u: uc.check_in(
                u,
                catalogue,
                key_result_id=kr,
                value=rng.uniform(0, 100),
                confidence=7,
                note="steady progress",
                blockers=[],
                expected=None,
            ),
            CommandContext(owners[kr], request, request),
            status=201,
        )

    figures: list[Figure] = []
    try:
        for i in range(0, len(krs), 32):  # every progress opened and cached
            await asyncio.gather(*(check_in(k) for k in krs[i : i + 32]))
        assert w._thread is not None
        writer_thread = w._thread
        for size in batches:
            rounds = max(1, check_ins // size)
            cpu0, sys0 = _thread_cpu(writer_thread)
            with _this_thread() as loop_used:
                for _ in range(rounds):
                    await asyncio.gather(*(check_in(rng.choice(krs)) for _ in range(size)))
            cpu1, sys1 = _thread_cpu(writer_thread)
            n = rounds * size
            figures.append(
                Figure(
                    "parts",
                    store.kind,
                    f"writer CPU per check-in, batches of {size}",
                    (cpu1 - cpu0) / n * 1e6,
                    "µs",
                    detail={
                        "system_us": (sys1 - sys0) / n * 1e6,
                        "event_loop_us": loop_used["cpu"] / n * 1e6,
                        "check_ins": n,
                    },
                )
            )
    finally:
        w.stop()
        app.close()
    return figures


# --- the views ------------------------------------------------------------------------------


def _received(key: str, version: int, sequence: int, name: str, data: dict[str, Any]) -> Received:
    event: Received = object.__new__(Received)
    event.__dict__.update(
        id=str(uuid.uuid4()),
        source="okr/checkins",
        type=f"okr.checkins.key_result_progress.{name}.v1",
        aggregate_key=key,
        aggregate_version=version,
        sequence=sequence,
        time=datetime.now(UTC),
        data=data,
        actor="bench-owner",
        correlation_id="bench",
        causation_id="bench",
    )
    return event


def views(store: Store, key_results: int, batches: list[int], events: int) -> list[Figure]:
    app = ProjectionsApplication(store_env(store.settings("projections", UNUSED_NATS_URL)))
    try:
        db = Database(app)
        inbox = Inbox(db, "views", Views(Tables(1)))
        inbox.setup()
        cycle = str(uuid.uuid4())
        krs = [uuid.uuid4() for _ in range(key_results)]
        versions = dict.fromkeys(krs, 1)
        sequence = 0
        opened = []
        for kr in krs:
            sequence += 1
            data = {"key_result_id": str(kr), "cycle_id": cycle}
            opened.append(_received(str(progress_id_for(kr)), 1, sequence, "opened", data))
        for i in range(0, len(opened), 100):
            inbox.process(opened[i : i + 100])
        rng = random.Random(1)

        def check_ins(size: int) -> list[Received]:
            nonlocal sequence
            batch = []
            for _ in range(size):
                kr = rng.choice(krs)
                versions[kr] += 1
                sequence += 1
                data = {
                    "key_result_id": str(kr),
                    "check_in_id": str(uuid.uuid4()),
                    "number": versions[kr] - 1,
                    "value": 1.5,
                    "confidence": 7,
                    "note": "steady progress",
                    "blockers": [],
                }
                key = str(progress_id_for(kr))
                batch.append(_received(key, versions[kr], sequence, "checked_in", data))
            return batch

        figures = []
        for size in batches:
            prepared = [check_ins(size) for _ in range(max(1, events // size))]
            with _this_thread() as used:
                for batch in prepared:
                    inbox.process(batch)
                    inbox.sync()
            n = len(prepared) * size
            figures.append(
                Figure(
                    "parts",
                    store.kind,
                    f"views CPU per event, batches of {size}",
                    used["cpu"] / n * 1e6,
                    "µs",
                    detail={"system_us": used["system"] / n * 1e6, "events": n},
                )
            )
        return figures
    finally:
        app.close()


# --- a thread hand-off ----------------------------------------------------------------------


async def hand_off(rounds: int) -> Figure:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as executor:
        await loop.run_in_executor(executor, int)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            await loop.run_in_executor(executor, int)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return Figure(
        "parts",
        "-",
        "a call handed to a thread and awaited, wall time",
        wall / rounds * 1e6,
        "µs",
        detail={"cpu_us": cpu / rounds * 1e6, "rounds": rounds},
    )

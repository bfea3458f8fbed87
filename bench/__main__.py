"""`python -m bench` (`make bench`): every benchmark, each figure beside its ceiling measured in
the same run on the same machine; a table on stdout and JSON in test-artifacts/bench/.

`--smoke` (`make bench-smoke`, run by CI) runs everything at a tiny size: it shows the harness
works, its figures mean nothing. Run the full benchmarks on a quiet machine: anything else
running takes CPU from the services and from their ceilings alike, but not evenly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import dataset, pipeline, wrk
from bench import http as web
from bench import parts as bench_parts
from bench.common import Figure, Nats, Store, postgres_reachable
from services.checkins.application import CheckinsApplication
from services.goals.application import GoalsApplication
from shared.collector import tune_collector

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "test-artifacts" / "bench"


@dataclass(frozen=True)
class Plan:
    key_results: int
    phases: list[int]  # total stored events at which the HTTP figures are taken
    clients: list[int]
    seconds: float
    latency_seconds: float  # each held load of command -> projection: its probes' samples
    shares: list[float]  # loads, as shares of the best check-in rate, for command -> projection
    relay_events: int
    rebuild_events: dict[str, int]
    store_seconds: float
    parts_events: int  # check-ins (events) each batch size of the parts' figures takes


# The parts' batch sizes: the writer's at one client, at 32 (what it takes then) and more; the
# views' from one event to a backlog's.
WRITER_BATCHES = [1, 13, 64]
VIEWS_BATCHES = [1, 4, 16, 64]
HAND_OFFS = 20_000


FULL = Plan(
    key_results=500,
    phases=[10_000, 100_000, 1_000_000],
    clients=[1, 8, 32],
    seconds=10,
    latency_seconds=30,  # about 600 probes a load: a p99 not the second slowest of 200
    shares=[0.5, 0.9],
    relay_events=100_000,
    rebuild_events={"sqlite": 100_000, "postgres": 1_000_000},
    store_seconds=5,
    parts_events=3_000,
)
SMOKE = Plan(
    key_results=20,
    phases=[300, 600],
    clients=[1, 4],
    seconds=1,
    latency_seconds=1,
    shares=[0.5],
    relay_events=500,
    rebuild_events={"sqlite": 500, "postgres": 500},
    store_seconds=0.5,
    parts_events=64,
)


def positions(store: Store) -> dict[str, int]:
    """The highest notification id in the goals and checkins stores."""
    out = {}
    for name, cls in (("goals", GoalsApplication), ("checkins", CheckinsApplication)):
        with dataset.opened(store, name, cls) as app:
            out[name] = dataset.max_position(app)
    return out


def _stamp(figures: list[Figure], **detail: Any) -> list[Figure]:
    for f in figures:
        f.detail.update(detail)
    return figures


async def http_benchmarks(kind: str, plan: Plan, base: Path) -> list[Figure]:
    figures: list[Figure] = []
    with Store.create(kind, base) as store:
        nats = Nats(base)
        nats.start()
        system: web.System | None = None
        try:
            await web.declare_stream(nats.url)
            data = await asyncio.to_thread(
                dataset.generate, store, key_results=plan.key_results, check_ins=0
            )
            ids = [str(k) for k in data.key_result_ids]
            system = web.System(store, nats, base)
            stored = sum(positions(store).values())
            for i, target in enumerate(plan.phases):
                if target > stored:
                    grow = target - stored
                    print(f"[{kind}] storing {grow:,} more check-ins", file=sys.stderr)
                    data = await asyncio.to_thread(dataset.add_check_ins, store, data, grow)
                at = positions(store)
                events = sum(at.values())
                print(f"[{kind}] {events:,} events: starting the services", file=sys.stderr)
                await asyncio.to_thread(system.start)
                took = await web.caught_up(system, at)
                print(f"[{kind}] caught up in {took:.1f} s", file=sys.stderr)
                first = i == 0
                # Every size runs the same clients in the same order, so the later figures see
                # an aggregate cache as warm as the first ones did (each size starts cold).
                clients = plan.clients
                found, best = await asyncio.to_thread(
                    web.throughput, system, kind, ids, clients, plan.seconds
                )
                figures += _stamp(found, events=events)
                shares = plan.shares if first else plan.shares[:1]
                found = await web.projection_latency(
                    system, kind, ids, best, shares, plan.latency_seconds
                )
                figures += _stamp(found, events=events)
                middle = data.started_at + (data.ended_at - data.started_at) / 2
                found = await web.as_of(
                    system, kind, str(data.cycle_id), middle.isoformat(), events
                )
                figures += _stamp(found, events=events)
                figures += _stamp(web.memory(system, kind, events), events=events)
                await asyncio.to_thread(system.stop)
                stored = sum(positions(store).values())
        finally:
            if system is not None:
                system.stop()
            nats.stop()
    scale = web.flatness(
        figures,
        lambda f: f.name.split(" (")[0] if f.bench in ("memory", "as_of") else _series(f),
        "",
    )
    return figures + scale


def _series(f: Figure) -> str | None:
    if f.bench == "to-projection" and "p50" in f.name and f.target:
        return "command → projection p50 at 50% load"
    if f.bench == "to-projection" and "p99" in f.name and f.target:
        return "command → projection p99 at 50% load"
    if f.bench == "checkins" and f.name.endswith("clients") and f.target:
        return f.name
    cpu = f.name.startswith(("checkins CPU", "machine CPU"))
    if f.bench == "checkins" and cpu and f.name.endswith("clients"):
        return f.name
    return None


async def pipeline_benchmarks(kind: str, plan: Plan, base: Path) -> list[Figure]:
    figures: list[Figure] = []
    with Store.create(kind, base) as store:
        figures += await pipeline.store_ceiling(store, plan.store_seconds)
    with Store.create(kind, base) as store:
        figures += await pipeline.relay(store, base, plan.relay_events)
    with Store.create(kind, base) as store:
        figures += await pipeline.rebuild(store, base, plan.rebuild_events[kind])
    return figures


async def parts_benchmarks(kind: str, plan: Plan, base: Path) -> list[Figure]:
    with Store.create(kind, base) as store:
        figures = await bench_parts.writer(
            store, plan.key_results, WRITER_BATCHES, plan.parts_events
        )
    with Store.create(kind, base) as store:
        figures += bench_parts.views(store, plan.key_results, VIEWS_BATCHES, plan.parts_events)
    return figures


def _number(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def table(figures: list[Figure]) -> str:
    header = ["bench", "store", "figure", "value", "unit", "ceiling", "ratio", "target", "met"]
    rows = [header]
    for f in figures:
        met = "" if f.met is None else ("yes" if f.met else "NO")
        rows.append(
            [
                f.bench,
                f.store,
                f.name,
                _number(f.value),
                f.unit,
                _number(f.ceiling),
                "" if f.ratio is None else f"{f.ratio:.2f}",
                f.target or "",
                met,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness")
    parser.add_argument("--stores", default="sqlite,postgres", help="comma-separated")
    parser.add_argument(
        "--only", default="http,pipeline,parts", help="http, pipeline, parts, comma-separated"
    )
    parser.add_argument("--phases", help="stored events at which to measure, e.g. 10000,100000")
    parser.add_argument("--seconds", type=float, help="length of each timed load run")
    parser.add_argument(
        "--latency-seconds", type=float, help="length of each held load of command → projection"
    )
    parser.add_argument("--label", help="name of the JSON file (default: latest or smoke)")
    parser.add_argument("--relay-events", type=int, help="backlog the relay publishes")
    parser.add_argument("--rebuild-events", type=int, help="events the rebuild applies")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if args.phases:
        plan = Plan(**(plan.__dict__ | {"phases": [int(x) for x in args.phases.split(",")]}))
    if args.seconds:
        plan = Plan(**(plan.__dict__ | {"seconds": args.seconds}))
    if args.latency_seconds:
        plan = Plan(**(plan.__dict__ | {"latency_seconds": args.latency_seconds}))
    if args.relay_events:
        plan = Plan(**(plan.__dict__ | {"relay_events": args.relay_events}))
    if args.rebuild_events:
        every = dict.fromkeys(plan.rebuild_events, args.rebuild_events)
        plan = Plan(**(plan.__dict__ | {"rebuild_events": every}))
    if not wrk.available():
        print("wrk is needed: `make bench-tools` (Debian's wrk)", file=sys.stderr)
        return 2
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if "postgres" in stores and not postgres_reachable():
        print("PostgreSQL is not reachable (OKR_BENCH_DATABASE_URL): PostgreSQL figures skipped")
        stores.remove("postgres")
    parts = set(args.only.split(","))
    # The relay and the rebuild are measured in this process: collected as the services are.
    tune_collector()
    started = time.perf_counter()
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="okr-bench-") as folder:
        base = Path(folder)
        if "parts" in parts:
            figures.append(
                asyncio.run(bench_parts.hand_off(HAND_OFFS // (100 if args.smoke else 1)))
            )
        for kind in stores:
            if "parts" in parts:
                figures += asyncio.run(parts_benchmarks(kind, plan, base))
            if "pipeline" in parts:
                figures += asyncio.run(pipeline_benchmarks(kind, plan, base))
            if "http" in parts:
                figures += asyncio.run(http_benchmarks(kind, plan, base))
    print(table(figures))
    OUT.mkdir(parents=True, exist_ok=True)
    result = {
        "at": datetime.now(UTC).isoformat(),
        "smoke": args.smoke,
        "plan": plan.__dict__,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": _cpus(),
        },
        "seconds": round(time.perf_counter() - started, 1),
        "figures": [f.as_dict() for f in figures],
    }
    name = f"{args.label or ('smoke' if args.smoke else 'latest')}.json"
    (OUT / name).write_text(json.dumps(result, indent=2, default=str))
    print(f"\n{len(figures)} figures in {result['seconds']} s; JSON in {OUT / name}")
    return 0


def _cpus() -> str:
    try:
        models = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        return f"{len(models)} x {models[0]}" if models else "unknown"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())

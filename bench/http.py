"""The benchmarks that go through HTTP, against the services as separate processes:
check-in throughput beside the bare-FastAPI ceiling, single-client latency, command →
projection latency under a held load, `as_of` against the current tree, and each process's
memory as the history grows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats

from bench import wrk
from bench.common import (
    ROOT,
    SECRET,
    Figure,
    Nats,
    ServiceProcess,
    Store,
    children_cpu_seconds,
    free_port,
    judge,
    machine_cpu_seconds,
)
from shared.auth import mint_token
from shared.nats import ensure_stream
from shared.settings import Settings

SERVICES = ("goals", "checkins", "reviews", "projections")


def bench_token() -> str:
    return mint_token(SECRET, "bench", roles=["admin"], ttl_s=24 * 3600)


async def declare_stream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await ensure_stream(nc.jetstream(), Settings(nats_url=nats_url))
    finally:
        await nc.close()


@dataclass
class System:
    """The four services (and the ceiling app) as processes, on one store and one NATS."""

    store: Store
    nats: Nats
    base: Path
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        env = self.store.environment(self.nats.url) | {
            "PYTHONPATH": str(ROOT),
            "OKR_RELAY_POLL_INTERVAL_S": "0.2",
        }
        for name in SERVICES:
            port = free_port()
            self.processes[name] = ServiceProcess(
                name, env | {f"OKR_{name.upper()}_PORT": str(port)}, port, self.base / f"{name}.log"
            )
        port = free_port()
        self.processes["ceiling"] = ServiceProcess(
            "ceiling",
            env | {"OKR_BENCH_CEILING_PORT": str(port)},
            port,
            self.base / "ceiling.log",
            command=[sys.executable, "-m", "bench.ceiling"],
        )

    def url(self, name: str) -> str:
        return self.processes[name].url

    def start(self) -> None:
        for process in self.processes.values():
            process.start()
        for process in self.processes.values():
            process.wait_ready()

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()


async def caught_up(system: System, positions: dict[str, int], timeout: float = 1800) -> float:
    """Wait until the checkins catalogue and the projections have applied `positions`
    (service -> highest notification id); returns the seconds it took."""
    started = time.monotonic()
    token = bench_token()
    wanted = [f"{service}:{n}" for service, n in positions.items() if n]
    checks = [
        (system.url("checkins"), "/v1/catalogue", [p for p in wanted if p.startswith("goals:")]),
        (system.url("projections"), "/v1/cycles", wanted),
    ]
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        for base, path, at in checks:
            while True:
                r = await c.get(f"{base}{path}", params={"min_position": at})
                if r.status_code == 200:
                    break
                if r.status_code != 409 or time.monotonic() - started > timeout:
                    raise RuntimeError(f"{base}{path} did not catch up: {r.status_code} {r.text}")
    return time.monotonic() - started


# --- 1. throughput and single-client latency --------------------------------------------


# The services count as quiet when together they use less CPU than this over half a second.
QUIET_CPU_S = 0.03


def quiet(system: System, timeout: float = 15.0) -> None:
    """Wait (bounded) until the services are idle: after a load, the consumers and relays may
    still be working off what it left, which would take from the next measurement."""
    deadline = time.monotonic() + timeout
    used = sum(system.processes[name].cpu_seconds() for name in SERVICES)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(system.processes[name].cpu_seconds() for name in SERVICES)
        if now - used < QUIET_CPU_S:
            return
        used = now


@dataclass(frozen=True)
class Usage:
    """CPU seconds used so far, or during a load as the difference of two: each process of the
    system (the ceiling app's too), the NATS server, the load generators run and ended, and the
    whole machine, summed over its cores: busy, and in all. Beside the CPU, each process's
    context switches (voluntary, involuntary): how often its threads waited, for the GIL among
    other things."""

    processes: dict[str, float]
    nats: float
    load: float
    busy: float
    total: float
    switches: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def now(cls, system: System) -> Usage:
        busy, total = machine_cpu_seconds()
        return cls(
            {name: p.cpu_seconds() for name, p in system.processes.items()},
            system.nats.cpu_seconds(),
            children_cpu_seconds(),
            busy,
            total,
            {name: p.context_switches() for name, p in system.processes.items()},
        )

    def __sub__(self, before: Usage) -> Usage:
        return Usage(
            {name: v - before.processes[name] for name, v in self.processes.items()},
            self.nats - before.nats,
            self.load - before.load,
            self.busy - before.busy,
            self.total - before.total,
            {
                name: (v - before.switches[name][0], i - before.switches[name][1])
                for name, (v, i) in self.switches.items()
                if name in before.switches
            },
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            {name: v + other.processes[name] for name, v in self.processes.items()},
            self.nats + other.nats,
            self.load + other.load,
            self.busy + other.busy,
            self.total + other.total,
            {
                name: (v + other.switches[name][0], i + other.switches[name][1])
                for name, (v, i) in self.switches.items()
                if name in other.switches
            },
        )

    def switches_per_request(self, requests: int) -> dict[str, dict[str, float]]:
        """Context switches per request of each process that switched at all."""
        n = max(requests, 1)
        return {
            name: {"voluntary": round(v / n, 3), "involuntary": round(i / n, 3)}
            for name, (v, i) in self.switches.items()
            if v or i
        }

    def per_request(self, requests: int) -> dict[str, float]:
        """Milliseconds of CPU per request: each process that used any, NATS, the load
        generator (`wrk`), the rest of the machine (`other`: the database server, the kernel's
        own threads, this harness) and the whole machine (`machine`)."""
        n = max(requests, 1)
        out = {name: 1000 * v / n for name, v in self.processes.items() if v > 0}
        out |= {"nats": 1000 * self.nats / n, "wrk": 1000 * self.load / n}
        known = sum(self.processes.values()) + self.nats + self.load
        out |= {"other": 1000 * max(0.0, self.busy - known) / n, "machine": 1000 * self.busy / n}
        return {k: round(v, 4) for k, v in out.items()}

    @property
    def busy_share(self) -> float:
        """How busy the machine's cores were, together."""
        return self.busy / self.total if self.total else 0.0


def _ceiling(
    system: System, ids: list[str], token: str, connections: int, seconds: float
) -> tuple[wrk.WrkResult, Usage]:
    """The ceiling app under the same load, once the services are quiet: wrk's result and the
    CPU it took."""
    quiet(system)
    started = Usage.now(system)
    result = wrk.run(system.url("ceiling"), ids, token, connections=connections, seconds=seconds)
    return result, Usage.now(system) - started


@dataclass(frozen=True)
class _Point:
    """One check-in point: the check-ins under a load, and the ceiling app under the same load
    right before and right after it, each with the CPU it took."""

    real: wrk.WrkResult
    used: Usage
    before: wrk.WrkResult
    after: wrk.WrkResult
    ceiling_used: Usage

    @property
    def ceiling_rate(self) -> float:
        # The mean of the two runs takes out a machine that speeds up or slows down steadily.
        return (self.before.rate + self.after.rate) / 2

    def machine_figure(self, store: str, name: str, **detail: Any) -> Figure:
        """What a check-in cost the whole machine, every process and the kernel, against what
        a bare POST cost it: the rate can reach half the ceiling's only if the machine's cores
        can pay for it."""
        requests = self.before.requests + self.after.requests
        return Figure(
            "checkins",
            store,
            name,
            self.used.per_request(self.real.requests)["machine"],
            "ms",
            ceiling=self.ceiling_used.per_request(requests)["machine"],
            ceiling_name="the machine's CPU per bare FastAPI POST",
            detail={
                "cpu_ms_per_check_in": self.used.per_request(self.real.requests),
                "cpu_ms_per_bare_post": self.ceiling_used.per_request(requests),
                **detail,
                "busy": round(self.used.busy_share, 3),
                "busy_bare_post": round(self.ceiling_used.busy_share, 3),
            },
        )


def _point(
    system: System,
    ids: list[str],
    token: str,
    connections: int,
    seconds: float,
    paused: tuple[str, ...] = (),
) -> _Point:
    """Check-ins beside the ceiling app run right before and right after them, so that both
    see the same machine; the processes named in `paused` stopped during the check-ins."""
    before, before_used = _ceiling(system, ids, token, connections, seconds)
    with contextlib.ExitStack() as stopped:
        for name in paused:
            stopped.enter_context(system.processes[name].paused())
        started = Usage.now(system)
        real = wrk.run(system.url("checkins"), ids, token, connections=connections, seconds=seconds)
        used = Usage.now(system) - started
    if paused:
        # They work off what the load left before the ceiling runs again.
        quiet(system, timeout=120)
    after, after_used = _ceiling(system, ids, token, connections, seconds)
    if real.failed or before.failed or after.failed:
        raise RuntimeError(
            f"errors under load{', ' + ' and '.join(paused) + ' paused' if paused else ''}:"
            f" checkins {real.errors}, ceiling {before.errors} and {after.errors}"
        )
    return _Point(real, used, before, after, before_used + after_used)


def throughput(
    system: System, store: str, ids: list[str], clients: list[int], seconds: float
) -> tuple[list[Figure], float]:
    """Check-ins at each number of clients beside the ceiling app (`_point`), then once more
    at the most clients with the consumers paused. Returns the figures and the best check-in
    rate."""
    token = bench_token()
    figures: list[Figure] = []
    best = 0.0
    for n in clients:
        point = _point(system, ids, token, n, seconds)
        real, used = point.real, point.used
        best = max(best, real.rate)
        clients_name = f"{n} client{'s' if n > 1 else ''}"
        figures.append(
            Figure(
                "checkins",
                store,
                f"check-ins/s, {clients_name}",
                real.rate,
                "req/s",
                ceiling=point.ceiling_rate,
                ceiling_name="bare FastAPI POST (same body model and token check), mean of"
                " the runs before and after",
                target=">= 0.5" if n > 1 else None,
                met=judge(real.rate / point.ceiling_rate, ">= 0.5") if n > 1 else None,
                detail={
                    "checkins": real.as_dict(),
                    "ceiling": point.before.as_dict(),
                    "ceiling_after": point.after.as_dict(),
                },
            )
        )
        # CPU per request is steadier than a rate on a shared machine: it shows what a
        # change costs or saves even when the run's throughput is off by noise.
        ceiling_requests = point.before.requests + point.after.requests
        figures.append(
            Figure(
                "checkins",
                store,
                f"checkins CPU per check-in, {clients_name}",
                used.per_request(real.requests).get("checkins", 0.0),
                "ms",
                ceiling=point.ceiling_used.per_request(ceiling_requests).get("ceiling", 0.0),
                ceiling_name="bare FastAPI POST CPU per request",
                detail={"cpu_ms_per_check_in": used.per_request(real.requests)},
            )
        )
        figures.append(
            point.machine_figure(
                store,
                f"machine CPU per check-in, {clients_name}",
                context_switches_per_check_in=used.switches_per_request(real.requests),
                context_switches_per_bare_post=point.ceiling_used.switches_per_request(
                    ceiling_requests
                ),
                cores=os.cpu_count(),
            )
        )
        if n == 1:
            limit = "<= 3" if store == "sqlite" else "<= 5"
            figures.append(
                Figure(
                    "checkins",
                    store,
                    "command p50, 1 client",
                    real.p50_ms,
                    "ms",
                    ceiling=(point.before.p50_ms + point.after.p50_ms) / 2,
                    ceiling_name="bare FastAPI POST p50",
                    target=limit,
                    met=judge(real.p50_ms, limit),
                    detail={"p90_ms": real.p90_ms, "p99_ms": real.p99_ms},
                )
            )
    if max(clients) > 1:
        figures += _consumers_paused(system, store, ids, token, max(clients), seconds)
    return figures, best


# The services that follow the check-ins from the stream; the command path does not wait for
# them.
CONSUMERS = ("reviews", "projections")


def _consumers_paused(
    system: System, store: str, ids: list[str], token: str, connections: int, seconds: float
) -> list[Figure]:
    """Check-ins with the services that consume them stopped (SIGSTOP) during the load, beside
    the ceiling run right before and after: what the command path reaches when it does not
    share the machine's cores with the views and the reviews, which catch up afterwards. No
    target: it shows how much of the gap to the target is the cores being shared."""
    point = _point(system, ids, token, connections, seconds, paused=CONSUMERS)
    return [
        Figure(
            "checkins",
            store,
            f"check-ins/s, {connections} clients, consumers paused",
            point.real.rate,
            "req/s",
            ceiling=point.ceiling_rate,
            ceiling_name="bare FastAPI POST, mean of the runs before and after",
            detail={
                "paused": list(CONSUMERS),
                "checkins": point.real.as_dict(),
                "ceiling": point.before.as_dict(),
                "ceiling_after": point.after.as_dict(),
            },
        ),
        point.machine_figure(
            store, f"machine CPU per check-in, {connections} clients, consumers paused"
        ),
    ]


# --- 2. command -> projection latency under a held load ---------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Http1:
    """A keep-alive HTTP/1.1 client on one connection, for the latency probe: httpx's own CPU
    (about 2.5 ms for a command and a read on an idle machine here, more under load) would
    otherwise be counted as the system's latency. Answers must carry a Content-Length, as every
    JSON answer of the services and of the bare app does."""

    # uvicorn closes a keep-alive connection idle for 5 s: one idle for longer than this is
    # opened again before a request, rather than be found closed by it.
    IDLE_S = 4.0

    def __init__(self, url: str, token: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.headers = f"Host: {host}\r\nAuthorization: Bearer {token}\r\n".encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._used = 0.0

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self._writer is not None and time.monotonic() - self._used > self.IDLE_S:
            await self.close()
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        try:
            return await self._exchange(method, path, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()  # the server closed it: the next request opens another
            raise
        finally:
            self._used = time.monotonic()

    async def _exchange(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        assert self._reader is not None and self._writer is not None
        extra = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        self._writer.write(
            f"{method} {path} HTTP/1.1\r\n".encode()
            + self.headers
            + (extra if body else b"")
            + b"\r\n"
            + body
        )
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
        length = {k.strip().lower(): v for k, v in fields.items()}.get(b"content-length")
        if length is None:
            raise RuntimeError(f"{method} {path}: an answer without Content-Length")
        return status, await self._reader.readexactly(int(length))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


async def _probe(
    system: System, ids: list[str], stop: asyncio.Event, every_s: float, *, floor: bool = False
) -> tuple[list[float], list[float]]:
    """Check in, then read the projections with `min_position` of the answer; the time from
    sending the command to the projections' answer, and the part spent in the read. With
    `floor`, the same two requests to the bare app (its check-in and its `/readyz`): what the
    client and HTTP alone take on this machine at that moment."""
    token = bench_token()
    command = Http1(system.url("ceiling" if floor else "checkins"), token)
    read = Http1(system.url("ceiling" if floor else "projections"), token)
    totals: list[float] = []
    reads: list[float] = []
    try:
        i = 0
        while not stop.is_set():
            i += 1
            kr = ids[i % len(ids)]
            body = json.dumps({"value": i % 100, "confidence": i % 11, "note": "probe"})
            started = time.perf_counter()
            status, answer = await command.request(
                "POST", f"/v1/key-results/{kr}/check-ins", body.encode()
            )
            if status != 201:
                raise RuntimeError(f"probe check-in: {status} {answer[:300]!r}")
            answered = time.perf_counter()
            position = urllib.parse.quote(json.loads(answer)["position"])
            status, answer = await read.request(
                "GET", "/readyz" if floor else f"/v1/cycles?min_position={position}"
            )
            if status != 200:
                raise RuntimeError(f"probe read: {status} {answer[:300]!r}")
            done = time.perf_counter()
            totals.append((done - started) * 1000)
            reads.append((done - answered) * 1000)
            await asyncio.sleep(max(0.0, every_s - (done - started)))
    finally:
        await command.close()
        await read.close()
    return totals, reads


# How far the load held may be from the share asked before the point is measured again.
HELD_TOLERANCE = 0.1
CONNECTIONS = 16


def corrected_pause(pause: float, held: float, rate: float, connections: int) -> float:
    """The pause per connection (ms) that makes `connections` hold `rate` req/s, given that
    `pause` held `held` req/s: each connection makes 1000 / (pause + service time) requests
    a second, and the service time is taken as it was."""
    service_ms = max(0.0, connections * 1000 / held - pause)
    return max(0.0, connections * 1000 / rate - service_ms)


async def _calibrated_pause(
    system: System, ids: list[str], rate: float, connections: int = CONNECTIONS
) -> float:
    """The pause per connection at which wrk holds about `rate` req/s, calibrated in two
    short runs."""
    token = bench_token()
    pause = max(0.0, connections / rate * 1000 - 2)
    for _ in range(2):
        trial = await asyncio.to_thread(
            wrk.run, system.url("checkins"), ids, token, connections=connections, seconds=3,
            delay_ms=pause,
        )  # fmt: skip
        if trial.rate <= 0:
            break
        pause = corrected_pause(pause, trial.rate, rate, connections)
    return pause


async def _held_load(
    system: System, ids: list[str], pause: float, seconds: float, connections: int = CONNECTIONS
) -> wrk.WrkResult:
    """wrk with `pause` ms between each connection's requests, for `seconds`."""
    return await asyncio.to_thread(
        wrk.run, system.url("checkins"), ids, bench_token(), connections=connections,
        seconds=seconds, delay_ms=pause,
    )  # fmt: skip


async def projection_latency(
    system: System, store: str, ids: list[str], best: float, shares: list[float], seconds: float
) -> list[Figure]:
    figures = []
    for share in shares:
        # Calibrated first: the probes time only the measured run, at the load it held. A
        # host whose speed moved since the calibration can hold quite another load: then the
        # pause is corrected from the run itself and the point measured once more.
        pause = await _calibrated_pause(system, ids, best * share)
        for attempt in (1, 2):
            stop = asyncio.Event()
            probe = asyncio.create_task(_probe(system, ids, stop, every_s=0.05))
            bare = asyncio.create_task(_probe(system, ids, stop, every_s=0.05, floor=True))
            load = await _held_load(system, ids, pause, seconds)
            stop.set()
            totals, reads = await probe
            floors, _ = await bare
            if load.failed:
                raise RuntimeError(f"errors under held load: {load.errors}")
            held = load.rate / best
            if attempt == 2 or load.rate <= 0 or abs(held - share) <= HELD_TOLERANCE:
                break
            pause = corrected_pause(pause, load.rate, best * share, CONNECTIONS)
        for q, limit in ((50, "<= 10"), (95, None), (99, "<= 50")):
            value = _percentile(totals, q)
            figures.append(
                Figure(
                    "to-projection",
                    store,
                    f"command → projection p{q}, load {held:.0%} of max",
                    value,
                    "ms",
                    ceiling=_percentile(floors, q),
                    ceiling_name="the same probe's command and read to the bare app",
                    target=limit if share <= 0.5 else None,
                    met=judge(value, limit) if limit and share <= 0.5 else None,
                    detail={
                        "samples": len(totals),
                        "floor_samples": len(floors),
                        "read_part_ms": round(_percentile(reads, q), 3),
                        "load": load.as_dict(),
                        "pause_ms": round(pause, 1),
                        "max_rate": round(best, 1),
                        "attempts": attempt,
                    },
                )
            )
    return figures


# --- 5. as_of against the current tree ------------------------------------------------


async def as_of(
    system: System, store: str, cycle_id: str, at: str, events: int, rounds: int = 30
) -> list[Figure]:
    token = bench_token()
    url = f"{system.url('projections')}/v1/cycles/{cycle_id}/okrs"
    timings: dict[str, list[float]] = {"current": [], "as_of": []}
    sizes: dict[str, int] = {}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        for _ in range(rounds):  # interleaved, so both see the same machine
            for kind, params in (("current", {}), ("as_of", {"as_of": at})):
                started = time.perf_counter()
                r = await c.get(url, params=params)
                timings[kind].append((time.perf_counter() - started) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(f"tree {kind}: {r.status_code} {r.text[:300]}")
                sizes[kind] = len(r.content)
    current = statistics.median(timings["current"])
    past = statistics.median(timings["as_of"])
    return [
        Figure(
            "as_of",
            store,
            f"tree as_of p50 ({events:,} events)",
            past,
            "ms",
            ceiling=current,
            ceiling_name="current tree p50",
            target="<= 5",
            met=judge(past / current, "<= 5"),
            detail={
                "rounds": rounds,
                "bytes": sizes,
                "current_p90_ms": round(_percentile(timings["current"], 90), 3),
                "as_of_p90_ms": round(_percentile(timings["as_of"], 90), 3),
            },
        )
    ]


# --- 6. memory ------------------------------------------------------------------------


def memory(system: System, store: str, events: int) -> list[Figure]:
    figures = []
    for name in SERVICES:
        kib = system.processes[name].memory_kib()
        figures.append(
            Figure(
                "memory",
                store,
                f"{name} peak RSS ({events:,} events)",
                kib["peak"] / 1024,
                "MiB",
                detail={"rss_mib": round(kib["rss"] / 1024, 1)},
            )
        )
    return figures


def flatness(figures: list[Figure], key: Callable[[Figure], str | None], unit: str) -> list[Figure]:
    """For each series (by `key`), the last size's value against the first's: the target is
    within ±20%, so the ratio in [0.8, 1.2]."""
    series: dict[str, list[Figure]] = {}
    for f in figures:
        name = key(f)
        if name is not None:
            series.setdefault(name, []).append(f)
    out = []
    for name, items in series.items():
        if len(items) < 2:
            continue
        first, last = items[0], items[-1]
        ratio = last.value / first.value if first.value else float("inf")
        out.append(
            Figure(
                "scale",
                first.store,
                f"{name}: {last.detail['events']:,} vs {first.detail['events']:,} events",
                last.value,
                unit,
                ceiling=first.value,
                ceiling_name=f"the same at {first.detail['events']:,} events",
                target="0.8..1.2",
                met=0.8 <= ratio <= 1.2,
                detail={"values": [(i.detail.get("events"), i.value) for i in items]},
            )
        )
    return out

"""The 3-node NATS cluster of deploy/nats/cluster, on loopback: the OKR stream with three
replicas, the goals and projections services connected to all three nodes with their own
credentials, a steady stream of commands — and the stream's leader killed (SIGKILL) in the
middle of it. Nothing may be lost or doubled: every command answered 2xx has its event on the
stream exactly once (by `Nats-Msg-Id`) and in the projections' audit trail exactly once.

The figures (commands sent and answered, when the leader died, how long until a new one
answered and the relay published again) are printed: `pytest -s` shows them, and
docs/operations.md#nats quotes a run.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from pydantic import SecretStr

from shared.nats import connect
from shared.settings import Settings
from shared.telemetry import RELAY_DUPLICATES
from tests.faults.report import record
from tests.support import (
    DEPLOY_NATS,
    ConfiguredNatsServer,
    RunningService,
    nats_passwords,
    serve,
    wait_all_healthy,
)
from tests.system import app_for, service_settings

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]

CLIENTS = 6  # concurrent HTTP clients
RATE = 120.0  # commands per second, all clients together: a steady load, not a flood
KILL_AFTER = 150  # commands answered before the leader is killed
AFTER_RECOVERY = 150  # commands answered after a new leader answers, before the load stops
DEADLINE_S = 60.0  # for the whole load; far more than a failover takes


def start_cluster(base: Path, passwords: dict[str, str]) -> list[ConfiguredNatsServer]:
    nodes = [
        ConfiguredNatsServer(
            DEPLOY_NATS / "cluster" / f"node-{i}.conf", base / f"nats-{i}", passwords
        )
        for i in (1, 2, 3)
    ]
    for node in nodes:
        node.routes = [n.route_url for n in nodes]
    for node in nodes:
        node.start(wait=False)  # together: a fresh cluster elects once all are up
    wait_all_healthy(nodes)
    return nodes


def as_user(settings: Any, user: str, passwords: dict[str, str], **more: Any) -> Any:
    return settings.model_copy(
        update={"nats_user": user, "nats_password": SecretStr(passwords[user]), **more}
    )


async def leader(nc: Client) -> str | None:
    """The stream's leader (a server name), or None while there is none to answer."""
    try:
        info = await nc.jetstream(timeout=0.5).stream_info("OKR")
    except Exception:
        return None
    return info.cluster.leader if info.cluster is not None else None


@dataclass
class Load:
    """Cycle creations on the goals service from a few clients at a steady rate."""

    goals: RunningService
    answered: list[dict[str, Any]] = field(default_factory=list)  # the 2xx bodies
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # transport errors
    sent: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def client(self, started: float) -> None:
        while not self.stop.is_set():
            n = self.sent
            self.sent += 1
            # The n-th command of the whole load is due at n / RATE: a steady pace.
            due = started + n / RATE
            if (ahead := due - time.monotonic()) > 0:
                await asyncio.sleep(ahead)
            try:
                r = await self.goals.client.post(
                    "/v1/cycles",
                    json={"name": f"C{n}", "starts_on": "2027-01-01", "ends_on": "2027-03-31"},
                )
            except Exception as e:
                self.failures[type(e).__name__] += 1
                continue
            self.statuses[r.status_code] += 1
            if 200 <= r.status_code < 300:
                self.answered.append(r.json())
                async with self.progress:
                    self.progress.notify_all()

    async def until_answered(self, count: int, timeout: float) -> None:
        async with self.progress:
            await asyncio.wait_for(
                self.progress.wait_for(lambda: len(self.answered) >= count), timeout
            )


async def test_killing_the_stream_leader_loses_and_doubles_nothing(tmp_path: Path) -> None:
    passwords = nats_passwords()
    nodes = start_cluster(tmp_path, passwords)
    by_name = {f"okr-nats-{i}": node for i, node in enumerate(nodes, start=1)}
    url = ",".join(node.url for node in nodes)  # OKR_NATS_URL listing all three
    try:
        setup = Settings(
            nats_url=url,
            nats_user="setup",
            nats_password=SecretStr(passwords["setup"]),
            stream_replicas=3,
        )
        # The stream with three replicas, declared as compose's `stream-setup` does it.
        declare = subprocess.run(
            [sys.executable, "-m", "shared", "stream"],
            env=dict(
                os.environ,
                OKR_NATS_URL=url,
                OKR_NATS_USER="setup",
                OKR_NATS_PASSWORD=passwords["setup"],
                OKR_STREAM_REPLICAS="3",
            ),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert declare.returncode == 0, declare.stderr
        # The setup user watches the stream's leader; the subscriber reads it at the end.
        watch = await connect(setup, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
        reader = await connect(
            setup.model_copy(
                update={
                    "nats_user": "subscriber",
                    "nats_password": SecretStr(passwords["subscriber"]),
                }
            ),
            reconnect_time_wait=0.2,
            max_reconnect_attempts=-1,
        )
        info = await watch.jetstream().stream_info("OKR")
        assert info.config.num_replicas == 3 and info.cluster is not None
        assert len(info.cluster.replicas or []) == 2

        store = {"data_dir": tmp_path / "data"}
        goals_settings = as_user(
            service_settings("goals", store, url), "goals", passwords, relay_publish_timeout_s=2
        )
        projections_settings = as_user(
            service_settings("projections", store, url), "projections", passwords
        )
        async with (
            serve(app_for("goals", goals_settings)) as goals,
            serve(app_for("projections", projections_settings)) as projections,
        ):
            duplicates_before = relay_duplicates()
            figures = await load_and_kill_the_leader(goals, watch, by_name)
            await check_nothing_lost_or_doubled(goals, projections, reader, figures)
            figures["relay republished, dropped by JetStream"] = (
                relay_duplicates() - duplicates_before
            )
            figures["restarted node caught up in s"] = await restart(
                by_name[figures["killed"]], watch
            )
        await watch.close()
        await reader.close()
        print("\nNATS cluster failover:", figures)
        record(
            "cluster",
            "3 nodes, stream with 3 replicas: the stream leader killed with SIGKILL under load",
            "every answered command on the stream once and in the audit trail once",
            **{k.replace(" ", "_"): v for k, v in figures.items()},
        )
    finally:
        for node in nodes:
            node.stop(kill=True)


async def load_and_kill_the_leader(
    goals: RunningService, watch: Client, by_name: dict[str, ConfiguredNatsServer]
) -> dict[str, Any]:
    load = Load(goals)
    started = time.monotonic()
    clients = [asyncio.create_task(load.client(started)) for _ in range(CLIENTS)]
    figures: dict[str, Any] = {}
    try:
        await load.until_answered(KILL_AFTER, DEADLINE_S)
        killed = await leader(watch)
        assert killed is not None, "the stream has no leader before the kill"
        relay = goals.runtime.relay
        link = goals.runtime.link
        figures["killed"] = killed
        figures["goals connected to the killed node"] = (
            link.nc is not None
            and link.nc.connected_url is not None
            and link.nc.connected_url.port == by_name[killed].port
        )
        figures["answered when killed"] = len(load.answered)
        figures["published when killed"] = relay.position
        figures["killed after s"] = round(time.monotonic() - started, 2)
        by_name[killed].stop(kill=True)  # SIGKILL: no goodbye to the others
        killed_at = time.monotonic()
        position_at_kill = relay.position

        # A new leader, as seen by a client: the first stream info answered by another node.
        deadline = killed_at + DEADLINE_S
        while (new := await leader(watch)) in (None, killed):
            assert time.monotonic() < deadline, "no new leader"
            await asyncio.sleep(0.05)
        figures["new leader"] = new
        figures["new leader after s"] = round(time.monotonic() - killed_at, 2)

        # The relay publishing again: its recorded position moves past where it was.
        while relay.position <= position_at_kill or relay.last_error is not None:
            assert time.monotonic() < deadline, f"the relay never resumed: {relay.last_error}"
            await asyncio.sleep(0.05)
        figures["relay published again after s"] = round(time.monotonic() - killed_at, 2)

        await load.until_answered(len(load.answered) + AFTER_RECOVERY, DEADLINE_S)
    finally:
        load.stop.set()
        await asyncio.gather(*clients)
    figures["load s"] = round(time.monotonic() - started, 2)
    figures["sent"] = load.sent
    figures["answered 2xx"] = len(load.answered)
    figures["statuses"] = dict(load.statuses)
    figures["transport errors"] = dict(load.failures)
    figures["answered"] = load.answered
    return figures


async def check_nothing_lost_or_doubled(
    goals: RunningService, projections: RunningService, reader: Client, figures: dict[str, Any]
) -> None:
    answered = figures.pop("answered")
    assert figures["statuses"].keys() <= {201}, figures["statuses"]
    relay = goals.runtime.relay
    stored = await asyncio.to_thread(goals.runtime.app.recorder.max_notification_id)
    deadline = time.monotonic() + 30
    while relay.position < stored:
        assert time.monotonic() < deadline, f"relay stuck at {relay.position} < {stored}"
        await asyncio.sleep(0.05)
    consumer = projections.runtime.consumers[0]
    assert await consumer.wait_for("okr/goals", stored, 30), consumer.positions

    # On the stream: each stored event once, by its Nats-Msg-Id (okr/goals:<sequence>).
    js = reader.jetstream(timeout=5)
    ids: Counter[str] = Counter()
    for seq in range(1, (await js.stream_info("OKR")).state.last_seq + 1):
        msg = await js.get_msg("OKR", seq)
        ids[(msg.headers or {})["Nats-Msg-Id"]] += 1
    doubled = {k: n for k, n in ids.items() if n > 1}
    assert not doubled, doubled
    assert set(ids) == {f"okr/goals:{n}" for n in range(1, stored + 1)}
    for body in answered:
        service, sequence = body["position"].split(":")
        assert ids[f"okr/{service}:{sequence}"] == 1, body
    figures["events on the stream"] = sum(ids.values())

    # In the projection: each answered command's entity once in the audit trail.
    r = await projections.client.get("/v1/audit.csv", params={"service": "goals"})
    assert r.status_code == 200, r.text
    entities = Counter(row["entity_id"] for row in csv.DictReader(io.StringIO(r.text)))
    assert all(entities[body["id"]] == 1 for body in answered)
    assert sum(entities.values()) == stored


def relay_duplicates() -> float:
    """How many of the goals relay's publishes JetStream recognised as duplicates so far."""
    return float(RELAY_DUPLICATES.labels("goals")._value.get())


async def restart(node: ConfiguredNatsServer, watch: Client) -> float:
    """Start the killed node again on its store; seconds until its replica is current."""
    started = time.monotonic()
    node.start()
    deadline = started + 30
    while True:
        try:
            info = await watch.jetstream(timeout=1).stream_info("OKR")
        except Exception:
            info = None
        replicas = (info.cluster.replicas or []) if info is not None and info.cluster else []
        if len(replicas) == 2 and all(r.current for r in replicas):
            return round(time.monotonic() - started, 2)
        assert time.monotonic() < deadline, f"replicas never current: {replicas}"
        await asyncio.sleep(0.05)

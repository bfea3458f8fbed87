"""NATS users and permissions (deploy/nats/auth.conf) on a real nats-server running
deploy/nats/nats.conf: every service does its whole job with its own credentials, and no user
can do what its role does not need — publish on another service's subjects, use another
service's durable consumer, change the stream, or read another user's replies.

A refused publish or request is dropped by the server, which tells the client why (a
"permissions violation" error); a JetStream request then gets no answer and times out. The
refusals below are checked both ways: the request fails, and the server said why. SQLite
stores only: the stores play no part in this.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import SecretStr

from services.projections.main import ProjectionsApplication
from services.projections.rebuild import rebuild
from shared.consumer import parse
from shared.nats import NatsLink, connect_options, redact
from shared.sql import Database
from shared.store import store_env
from tests.integration.test_quarter_shift import carried, finalise, review_to_finalise
from tests.support import (
    DEPLOY_NATS,
    ConfiguredNatsServer,
    RunningService,
    nats_passwords,
    serve,
)
from tests.system import app_for, service_settings

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("goals", "checkins", "reviews", "projections")
REFUSAL_WAIT_S = 0.5  # how long a request waits for the answer a refused one never gets


# --- the server, the stream and the services, once for the module ----------------------------


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    return nats_passwords()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, passwords: dict[str, str]
) -> Iterator[ConfiguredNatsServer]:
    node = ConfiguredNatsServer(
        DEPLOY_NATS / "nats.conf", tmp_path_factory.mktemp("nats"), passwords
    )
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def stream(server: ConfiguredNatsServer, passwords: dict[str, str]) -> str:
    """The stream, declared the way compose's `stream-setup` does: `python -m shared stream`
    as the `setup` user, which may do that and nothing else."""
    env = dict(
        os.environ,
        OKR_NATS_URL=server.url,
        OKR_NATS_USER="setup",
        OKR_NATS_PASSWORD=passwords["setup"],
    )
    for _ in range(2):  # creates, then updates
        done = subprocess.run(
            [sys.executable, "-m", "shared", "stream"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "stream OKR ready" in done.stdout
        assert passwords["setup"] not in done.stdout + done.stderr
    return "OKR"


def own_settings(
    name: str, base: Path, server: ConfiguredNatsServer, passwords: dict[str, str]
) -> Any:
    settings = service_settings(name, {"data_dir": base / "data"}, server.url)
    return settings.model_copy(
        update={"nats_user": name, "nats_password": SecretStr(passwords[name])}
    )


@pytest.fixture(scope="module")
async def system(
    tmp_path_factory: pytest.TempPathFactory,
    server: ConfiguredNatsServer,
    passwords: dict[str, str],
    stream: str,
) -> AsyncIterator[dict[str, RunningService]]:
    """The four services, each connecting as its own NATS user."""
    base = tmp_path_factory.mktemp("services")
    async with AsyncExitStack() as stack:
        services = {}
        for name in SERVICES:
            app = app_for(name, own_settings(name, base, server, passwords))
            services[name] = await stack.enter_async_context(serve(app))
        yield services


# --- clients as one user or another --------------------------------------------------------


class As:
    """A connection as one user, remembering what the server refused it."""

    def __init__(self, nc: Client, refusals: list[str]) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=REFUSAL_WAIT_S)
        self.refusals = refusals

    async def refused(self, subject: str, request: Awaitable[Any] | None = None) -> None:
        """`request` (if any) gets no answer, and the server says it refused `subject`."""
        if request is not None:
            with pytest.raises(NatsTimeoutError):
                await request
        deadline = time.monotonic() + 5
        while not any(f'"{subject.lower()}"' in r for r in self.refusals):
            assert time.monotonic() < deadline, f"no refusal of {subject}: {self.refusals}"
            await asyncio.sleep(0.02)


@asynccontextmanager
async def connected(
    server: ConfiguredNatsServer, passwords: dict[str, str], user: str, **options: Any
) -> AsyncIterator[As]:
    refusals: list[str] = []

    async def on_error(e: Exception) -> None:
        refusals.append(str(e).lower())

    settings = connect_options(server.url, user=user, password=passwords[user])
    nc = await nats.connect(**{**settings, **options}, error_cb=on_error)
    try:
        yield As(nc, refusals)
    finally:
        await nc.close()


async def stream_size(server: ConfiguredNatsServer, passwords: dict[str, str]) -> int:
    async with connected(server, passwords, "subscriber") as reader:
        return int((await reader.nc.jetstream().stream_info("OKR")).state.messages)


# --- every service, with its own credentials -----------------------------------------------


async def test_every_service_does_its_job_with_its_own_credentials(
    system: dict[str, RunningService], server: ConfiguredNatsServer
) -> None:
    goals, checkins, reviews, projections = (system[name] for name in SERVICES)
    log_before = len(server.log_text())
    # goals -> checkins' catalogue and reviews' catalogue; checkins -> reviews;
    # reviews -> goals' carry-over; everything -> projections.
    review_id, next_cycle, _ = await review_to_finalise(goals, checkins, reviews)
    body = await finalise(reviews, review_id)
    objective = await carried(goals.client, body)
    assert objective["cycle_id"] == next_cycle

    # The carried objective is a goals event: wait for both services' latest.
    at = await asyncio.to_thread(checkins.runtime.app.recorder.max_notification_id)
    goals_at = await asyncio.to_thread(goals.runtime.app.recorder.max_notification_id)
    r = await projections.client.get(
        f"/v1/cycles/{next_cycle}/okrs",
        params={"min_position": [f"checkins:{at}", f"goals:{goals_at}"]},
    )
    assert r.status_code == 200, r.text
    assert [o["id"] for o in r.json()["objectives"]] == [objective["id"]]

    for name, service in system.items():
        r = await service.client.get("/readyz")
        assert r.status_code == 200, (name, r.text)
        for consumer in service.runtime.consumers:
            assert consumer.last_error is None, (name, consumer.last_error)
    # The server logs every refusal ("Publish Violation", "Subscription Violation").
    assert "Violation" not in server.log_text()[log_before:]


async def test_the_projections_rebuild_runs_with_the_projections_credentials(
    system: dict[str, RunningService], server: ConfiguredNatsServer, passwords: dict[str, str]
) -> None:
    """The rebuild reads the stream's size, deletes stale durables and creates its own,
    numbered ones: what the `projections` user may do beyond the service."""
    projections = system["projections"]
    log_before = len(server.log_text())
    settings = projections.runtime.settings
    app = ProjectionsApplication(store_env(settings))
    try:
        generation = await rebuild(settings, Database(app), progress=False)
    finally:
        app.close()
    live = projections.runtime.parts["views"]
    deadline = time.monotonic() + 10
    while live.tables.generation != generation:
        assert time.monotonic() < deadline, "the service never switched"
        await asyncio.sleep(0.05)
    assert "Violation" not in server.log_text()[log_before:]


async def test_every_consumer_may_look_at_its_durable_and_read_the_stream_back(
    system: dict[str, RunningService], server: ConfiguredNatsServer
) -> None:
    """When deliveries may have been lost (a crash, a dropped connection), a consumer asks how
    far its durable's acknowledgements have got (`$JS.API.CONSUMER.INFO.OKR.<durable>`) and
    reads unacknowledged messages back from the stream (`$JS.API.STREAM.MSG.GET.OKR`), as its
    service's user. Refused, its readers would wait on a doubt that never ends."""
    log_before = len(server.log_text())
    for service in system.values():
        js = await service.runtime.link.wait()
        for consumer in service.runtime.consumers:
            info = await js.consumer_info(consumer.stream, consumer.durable)
            assert info.name == consumer.durable
            # Answered (a message, or none at that sequence): a refusal gets no answer.
            await consumer._stored(js, 1)
    assert "Violation" not in server.log_text()[log_before:]


# --- what a service may not do ---------------------------------------------------------------


async def test_a_service_cannot_publish_or_consume_as_another(
    server: ConfiguredNatsServer, passwords: dict[str, str], stream: str
) -> None:
    before = await stream_size(server, passwords)
    async with connected(server, passwords, "goals") as goals:
        await asyncio.gather(
            # Another service's subjects, through JetStream and plain.
            goals.refused(
                "okr.checkins.x.y", goals.js.publish("okr.checkins.x.y", b"{}", stream="OKR")
            ),
            publish_then_refused(goals, "okr.projections.x.y"),
            # Another service's durable: neither (re)created nor pulled from.
            goals.refused(
                "$JS.API.CONSUMER.DURABLE.CREATE.OKR.checkins-catalogue",
                goals.js.add_consumer(
                    "OKR",
                    ConsumerConfig(durable_name="checkins-catalogue", filter_subject="okr.>"),
                ),
            ),
            goals.refused(
                "$JS.API.CONSUMER.MSG.NEXT.OKR.reviews-catalogue",
                pull_one(goals, "reviews-catalogue"),
            ),
            # The stream: not purged.
            goals.refused("$JS.API.STREAM.PURGE.OKR", goals.js.purge_stream("OKR")),
        )
        # Core subscriptions: nothing but its own replies.
        await goals.nc.subscribe("okr.>")
        await goals.refused("okr.>")
        await goals.nc.subscribe("_INBOX.checkins.>")
        await goals.refused("_INBOX.checkins.>")

    async with connected(server, passwords, "projections") as projections:
        await asyncio.gather(
            projections.refused(
                "okr.projections.x.y",
                projections.js.publish("okr.projections.x.y", b"{}", stream="OKR"),
            ),
            # Its wildcard on durables stops at the other services' ones.
            projections.refused(
                "$JS.API.CONSUMER.MSG.NEXT.OKR.goals-carry-over",
                pull_one(projections, "goals-carry-over"),
            ),
            projections.refused(
                "$JS.API.CONSUMER.DELETE.OKR.checkins-catalogue",
                projections.js.delete_consumer("OKR", "checkins-catalogue"),
            ),
            projections.refused(
                "$JS.API.CONSUMER.DURABLE.CREATE.OKR.reviews-catalogue",
                projections.js.add_consumer(
                    "OKR", ConsumerConfig(durable_name="reviews-catalogue")
                ),
            ),
        )

    async with connected(server, passwords, "setup") as setup:
        await setup.refused("okr.goals.x.y", setup.js.publish("okr.goals.x.y", b"{}"))
        await setup.refused("$JS.API.STREAM.DELETE.OKR", setup.js.delete_stream("OKR"))

    assert await stream_size(server, passwords) == before
    assert '"OKR/user:goals" - Publish Violation - Subject "okr.checkins.x.y"' in server.log_text()


async def publish_then_refused(user: As, subject: str) -> None:
    """A plain publish, which nobody answers: only the server's refusal shows."""
    await user.nc.publish(subject, b"{}")
    await user.refused(subject)


async def pull_one(user: As, durable: str) -> Any:
    sub = await user.js.pull_subscribe_bind(durable=durable, stream="OKR")
    return await sub.fetch(1, timeout=REFUSAL_WAIT_S)


# --- the subscriber: reads everything, writes nothing -------------------------------------


async def test_the_subscriber_replays_everything_and_changes_nothing(
    system: dict[str, RunningService], server: ConfiguredNatsServer, passwords: dict[str, str]
) -> None:
    goals = system["goals"]
    before = await stream_size(server, passwords)
    r = await goals.client.post(
        "/v1/cycles", json={"name": "Q3", "starts_on": "2027-07-01", "ends_on": "2027-09-30"}
    )
    assert r.status_code == 201, r.text
    # The relay publishes after the answer: wait for the cycle's event to be in the stream.
    deadline = time.monotonic() + 10
    while (total := await stream_size(server, passwords)) <= before:
        assert time.monotonic() < deadline, "the cycle's event never reached the stream"
        await asyncio.sleep(0.05)

    # External systems keep nats-py's default `_INBOX.` replies.
    async with connected(server, passwords, "subscriber", inbox_prefix="_INBOX") as reader:
        js = reader.nc.jetstream(timeout=5)
        # An ephemeral pull consumer without acknowledgements (examples/subscriber.py's way).
        sub = await js.pull_subscribe(
            "okr.>",
            stream="OKR",
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30
            ),
        )
        replayed: list[Msg] = []
        while len(replayed) < total:
            replayed += await sub.fetch(min(256, total - len(replayed)), timeout=5)
        await sub.unsubscribe()
        for m in replayed:
            parse(m.subject, m.data, (m.headers or {}).get("Nats-Msg-Id"))
        assert any(json.loads(m.data)["subject"] == r.json()["id"] for m in replayed)

        # An ordered push consumer (flow control replies on $JS.FC).
        ordered = await js.subscribe("okr.>", ordered_consumer=True)
        count = 0
        async for _ in ordered.messages:
            count += 1
            if count == total:
                break
        await ordered.unsubscribe()

        # A durable of its own, with acknowledgements.
        durable = await js.pull_subscribe("okr.goals.>", durable="billing", stream="OKR")
        msgs = await durable.fetch(10, timeout=5)
        for m in msgs:
            await m.ack_sync()  # the server confirms each acknowledgement
        floor = (await durable.consumer_info()).ack_floor
        assert msgs and floor is not None and floor.consumer_seq == len(msgs)

        # Nothing written, nothing of the services' touched.
        deny = reader.js  # short timeouts: refused requests get no answer
        await asyncio.gather(
            reader.refused(
                "okr.goals.cycle.scheduled",
                deny.publish("okr.goals.cycle.scheduled", b"{}", stream="OKR"),
            ),
            publish_then_refused(reader, "okr.reviews.x.y"),
            reader.refused(
                "$JS.API.CONSUMER.DURABLE.CREATE.OKR.goals-carry-over",
                deny.add_consumer(
                    "OKR", ConsumerConfig(durable_name="goals-carry-over", filter_subject="okr.>")
                ),
            ),
            reader.refused(
                "$JS.API.CONSUMER.CREATE.OKR.checkins-catalogue.okr.>",
                deny.add_consumer(
                    "OKR",
                    ConsumerConfig(
                        name="checkins-catalogue",
                        durable_name="checkins-catalogue",
                        filter_subject="okr.>",
                    ),
                ),
            ),
            reader.refused(
                "$JS.API.CONSUMER.MSG.NEXT.OKR.projections-views-g2",
                pull_one(reader, "projections-views-g2"),
            ),
            reader.refused(
                "$JS.API.CONSUMER.DELETE.OKR.reviews-catalogue",
                deny.delete_consumer("OKR", "reviews-catalogue"),
            ),
            reader.refused("$JS.API.STREAM.PURGE.OKR", deny.purge_stream("OKR")),
            reader.refused(
                "$JS.API.STREAM.UPDATE.OKR",
                deny.update_stream(name="OKR", subjects=["okr.>"], max_msgs=1),
            ),
        )

        # The services' replies are not for it: refused when asked for by name, and left out
        # of a wildcard subscription.
        await reader.nc.subscribe("_INBOX.projections.>")
        await reader.refused("_INBOX.projections.>")
        overheard = await reader.nc.subscribe("_INBOX.>")
        await reader.nc.flush()
        goals_js = await goals.runtime.link.wait()  # the goals service's own connection
        await goals_js.get_last_msg("OKR", "okr.goals.>")  # answered on _INBOX.goals.…
        await js.stream_info("OKR")  # answered on the reader's own _INBOX.…
        await reader.nc.flush()
        heard = [await overheard.next_msg(1) for _ in range(overheard.pending_msgs)]
        assert len(heard) == 1 and not heard[0].subject.startswith("_INBOX.goals.")
    assert await stream_size(server, passwords) == total


# --- who gets in at all --------------------------------------------------------------------


async def test_no_user_or_a_wrong_password_is_refused(
    server: ConfiguredNatsServer, passwords: dict[str, str]
) -> None:
    for options in ({}, {"user": "goals", "password": passwords["checkins"]}):
        with pytest.raises(nats.errors.Error):
            await nats.connect(
                server.url, allow_reconnect=False, max_reconnect_attempts=0, **options
            )


async def test_logs_never_show_a_password(
    server: ConfiguredNatsServer, passwords: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-password-0123456789abcdef"
    link = NatsLink(server.url, "okr-goals", user="goals", password=wrong)
    with caplog.at_level(logging.WARNING, logger="shared.nats"):
        await link.start()
        deadline = time.monotonic() + 10
        while "authorization violation" not in caplog.text.lower():
            assert time.monotonic() < deadline, "the refusal was not logged"
            await asyncio.sleep(0.02)
        await link.close()
    assert wrong not in caplog.text
    # URLs, wherever they are shown (the CLI, the launcher, these logs), go through `redact`.
    shown = redact(f"nats://goals:{wrong}@nats-1:4222, nats://nats-2:4222,nats://t0ken@nats-3")
    assert shown == "nats://goals:***@nats-1:4222,nats://nats-2:4222,nats://***@nats-3"

"""Real components for tests: a nats-server per test, fresh PostgreSQL databases, services
served by uvicorn on free ports, and a JetStream reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import uvicorn
from fastapi import FastAPI
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.common import free_port  # outside the outgoing range, never the same twice
from shared.auth import mint_token
from shared.launcher import nats_server_binary
from shared.nats import ensure_stream
from shared.settings import Settings

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"


def token(subject: str = "alice", **kwargs: Any) -> str:
    """A token of the shared test secret; an admin unless `roles` says otherwise."""
    kwargs.setdefault("roles", ["admin"])
    return mint_token(SECRET, subject, **kwargs)


def auth(subject: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(subject)}"}


class NatsServer:
    """A real nats-server with JetStream on its own port and store folder."""

    def __init__(self, store_dir: Path) -> None:
        self.port = free_port()
        self.store_dir = store_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        raise RuntimeError("nats-server did not start")

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


DEPLOY_NATS = Path(__file__).resolve().parent.parent / "deploy" / "nats"
# The users of deploy/nats/auth.conf; each one's password is NATS_<USER>_PASSWORD.
NATS_USERS = ("goals", "checkins", "reviews", "projections", "setup", "subscriber")


def nats_passwords() -> dict[str, str]:
    """A fresh password per user of deploy/nats/auth.conf, and for the cluster's routes."""
    return {user: secrets.token_hex(16) for user in (*NATS_USERS, "route")}


class ConfiguredNatsServer:
    """A nats-server running one of the deploy/nats files unchanged, on loopback.

    As in production, the store folder and the passwords come from the environment
    (`NATS_STORE_DIR`, `NATS_<USER>_PASSWORD`); only the addresses differ, given as
    command-line flags, which nats-server applies over the file's. For a cluster node, set
    `routes` (every node's `route_url`) before `start`; `passwords` then needs "route". The
    server's log goes to `log_path`.
    """

    def __init__(self, config: Path, base: Path, passwords: dict[str, str]) -> None:
        self.config = config
        self.base = base
        self.passwords = passwords
        self.port = free_port()
        self.http_port = free_port()
        self.route_port = free_port()
        self.routes: list[str] = []
        self.log_path = base / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def route_url(self) -> str:
        return f"nats://127.0.0.1:{self.route_port}"

    def command(self) -> list[str]:
        command = [
            nats_server_binary(),
            "--config", str(self.config),
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.http_port),
        ]  # fmt: skip
        if self.routes:
            # Given `--cluster` without credentials, nats-server forgets the file's route
            # credentials (cluster.authorization): pass the same ones in that URL.
            command += ["--cluster", self._with_route_password(self.route_url)]
        return command

    def _with_route_password(self, url: str) -> str:
        return url.replace("nats://", f"nats://route:{self.passwords['route']}@", 1)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ, NATS_STORE_DIR=str(self.base / "jetstream"))
        for user, password in self.passwords.items():
            env[f"NATS_{user.upper()}_PASSWORD"] = password
        if self.routes:
            routes = ", ".join(self._with_route_password(url) for url in self.routes)
            env["NATS_ROUTES"] = f"[{routes}]"
        return env

    def start(self, *, wait: bool = True) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(), env=self.environment(), stdout=self._log, stderr=self._log
        )
        if wait:
            self.wait_healthy()

    def healthy(self) -> bool:
        """Whether /healthz says yes: serving clients, JetStream up (and, in a cluster, in
        contact with a metadata leader)."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            with httpx.Client(timeout=1) as client:
                return client.get(f"http://127.0.0.1:{self.http_port}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float = 20) -> None:
        wait_all_healthy([self], timeout)

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 20) -> str:
        """The log's last lines, without the health check's own warnings (one per poll of
        /healthz while waiting), which would hide why the server is not healthy."""
        kept = [line for line in self.log_text().splitlines() if "Healthcheck failed" not in line]
        return "\n".join(kept[-lines:])

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL if kill else signal.SIGINT)
            self.proc.wait(timeout=15)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def wait_all_healthy(servers: list[ConfiguredNatsServer], timeout: float = 20) -> None:
    """Wait until every server is healthy; fail at once, with its log, if one has exited.

    A cluster's node waits for a metadata leader that needs the others: were one of them to
    exit, the rest would only say "no meta leader" until the timeout.
    """
    deadline = time.monotonic() + timeout
    waiting = list(servers)
    while waiting:
        for server in servers:
            if server.exited():
                raise RuntimeError(f"nats-server {server.config.name} exited: {server.log_tail()}")
        waiting = [server for server in waiting if not server.healthy()]
        if not waiting:
            return
        if time.monotonic() > deadline:
            server = waiting[0]
            raise RuntimeError(
                f"nats-server {server.config.name} not healthy in {timeout}s: {server.log_tail()}"
            )
        time.sleep(0.05)


async def eventually(
    condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition never became true"
) -> None:
    """Wait, polling, until `condition()` holds; fail with `what` after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def declare_stream(url: str, **settings: Any) -> None:
    nc = await nats.connect(url)
    try:
        await ensure_stream(nc.jetstream(), Settings(nats_url=url, **settings))
    finally:
        await nc.close()


async def read_stream(url: str, expected: int, timeout: float = 10.0) -> list[Any]:
    """Every message on the stream, in stream order, waiting until `expected` have arrived."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            info = await js.stream_info("OKR")
            if info.state.messages >= expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        sub = await js.pull_subscribe(
            "okr.>",
            stream="OKR",
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        messages: list[Any] = []
        while len(messages) < info.state.messages:
            try:
                batch = await sub.fetch(min(500, info.state.messages - len(messages)), timeout=2)
            except nats.errors.TimeoutError:
                break
            for m in batch:
                await m.ack()
            messages.extend(batch)
        await sub.unsubscribe()
        return messages
    finally:
        await nc.close()


def bodies(messages: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in messages]


@dataclass
class RunningService:
    http: FastAPI
    client: httpx.AsyncClient
    server: QuickServer
    task: asyncio.Task[None]
    base_url: str

    @property
    def runtime(self) -> Any:
        return self.http.state.runtime

    async def stop(self) -> None:
        # The client's idle connections first: the server then has none to wait for.
        await self.client.aclose()
        self.server.ask_to_exit()
        await asyncio.wait_for(self.task, 20)


class QuickServer(uvicorn.Server):
    """uvicorn's server, stopping as soon as it is asked to.

    uvicorn looks at `should_exit` every 0.1 s, then gives the connections 0.1 s to close
    before it waits for them: about 0.15 s per service stopped, most of a short HTTP test's
    time. Here the main loop wakes on `exit`, and the shutdown does what uvicorn's does
    (stop accepting, close the connections, let requests in flight finish, then the
    application's shutdown) with no fixed pause.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.exit = asyncio.Event()

    def ask_to_exit(self) -> None:
        self.should_exit = True
        self.exit.set()

    async def main_loop(self) -> None:
        # on_tick(0) sets the Date header (uvicorn's loop does every tenth tick) and says
        # whether to exit.
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exit.wait(), 1.0)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        while self.server_state.connections or self.server_state.tasks:
            await asyncio.sleep(0.002)
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()


@contextlib.asynccontextmanager
async def serve(http: FastAPI) -> AsyncIterator[RunningService]:
    """Serve `http` with uvicorn on a free port inside the test's event loop."""
    port = free_port()
    config = uvicorn.Config(http, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = QuickServer(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign, assignment]
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 20
    while not server.started:
        if task.done():
            task.result()
        if time.monotonic() > deadline:
            raise RuntimeError("service did not start")
        await asyncio.sleep(0.01)
    base_url = f"http://127.0.0.1:{port}"
    client = httpx.AsyncClient(base_url=base_url, headers=auth(), timeout=20)
    running = RunningService(http, client, server, task, base_url)
    try:
        yield running
    finally:
        if not task.done():
            await running.stop()


class Postgres:
    """Fresh databases on the PostgreSQL server the tests may use."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def reachable(self) -> bool:
        try:
            with psycopg.connect(self.admin_url, connect_timeout=3):
                return True
        except psycopg.Error:
            return False

    def create_database(self) -> str:
        name = f"okr_test_{os.getpid()}_{len(self.created)}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        base = self.admin_url.rsplit("/", 1)[0]
        return f"{base}/{name}"

    def drop_all(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

"""Real components for tests: a nats-server per test, fresh PostgreSQL databases, services
served by uvicorn on free ports, and a JetStream reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
import uvicorn
from fastapi import FastAPI
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared.auth import mint_token
from shared.launcher import nats_server_binary
from shared.nats import ensure_stream
from shared.settings import Settings

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(subject: str = "alice", **kwargs: Any) -> str:
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
    server: uvicorn.Server
    task: asyncio.Task[None]
    base_url: str

    @property
    def runtime(self) -> Any:
        return self.http.state.runtime

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 20)
        await self.client.aclose()


@contextlib.asynccontextmanager
async def serve(http: FastAPI) -> AsyncIterator[RunningService]:
    """Serve `http` with uvicorn on a free port inside the test's event loop."""
    port = free_port()
    config = uvicorn.Config(http, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
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

"""NATS: a connection that keeps trying, and the one declaration of the `OKR` stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared.settings import Settings
from shared.tasks import stop_task

log = logging.getLogger(__name__)


def stream_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=settings.stream_name,
        subjects=[settings.stream_subjects],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=settings.stream_max_age_days * 86400 or None,
        duplicate_window=settings.stream_duplicate_window_s,
        num_replicas=settings.stream_replicas,
        storage=StorageType(settings.stream_storage),
    )


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create the stream, or bring its configuration in line with the settings.

    Only the launcher (and operators' setup jobs) call this: one owner of the declaration, so
    services with different settings never fight over it.
    """
    config = stream_config(settings)
    try:
        await js.stream_info(settings.stream_name)
    except NotFoundError:
        await js.add_stream(config)
        log.info("created stream %s", config.name)
    else:
        await js.update_stream(config)


class NatsLink:
    """One NATS connection for a service, (re)connecting in the background.

    A service starts and takes commands while NATS is down: the store is the source of truth,
    and the relay catches up when the link comes back.
    """

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def start(self) -> None:
        self._task = asyncio.create_task(self._connect_forever(), name=f"{self.name}-nats")

    async def wait(self) -> JetStreamContext:
        await self._ready.wait()
        assert self.js is not None
        return self.js

    async def _connect_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                self.nc = await nats.connect(
                    self.url,
                    name=self.name,
                    connect_timeout=2,
                    reconnect_time_wait=0.5,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    error_cb=self._on_error,
                )
            except Exception as e:
                log.warning("NATS at %s not reachable (%s); retrying", self.url, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.js = self.nc.jetstream(timeout=5)
            self._ready.set()
            return

    async def _on_error(self, e: Exception) -> None:
        log.debug("NATS: %s", e)

    async def close(self) -> None:
        await stop_task(self._task)
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.close()

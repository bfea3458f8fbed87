"""The composition root every service uses: store, writer, NATS link, relay and HTTP app.

Nothing connects at import time; `create_service` wires a service from its settings, and the
FastAPI lifespan starts and stops the moving parts in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.middleware.cors import CORSMiddleware

from shared.auth import IdentityProvider, SharedSecret, TokenVerifier
from shared.consumer import Consumer
from shared.domain import InvalidValue, NotYetKnown
from shared.exclusive import CHECK_EVERY_S, PostgresStoreLock, StoreLock, lock_store
from shared.http import (
    BodyLimitMiddleware,
    Check,
    LeanCommand,
    LeanCommandMiddleware,
    MetricsMiddleware,
    RequestContextMiddleware,
    document_headers,
    install_error_handlers,
    operations_router,
)
from shared.nats import NatsLink
from shared.relay import Relay
from shared.settings import DEFAULT_PORTS, ServiceSettings
from shared.store import ServiceApplication, store_env
from shared.tasks import stop_task
from shared.writer import CommandWriter

RELAY_STUCK_AFTER_S = 30.0
CONSUMER_STUCK_AFTER_S = 30.0

# What a browser page on another origin (the board) may send and read: bearer tokens, JSON
# bodies and the command headers; the version and the new resource's address back.
CORS_METHODS = ["GET", "POST", "PUT", "PATCH"]
CORS_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "If-Match"]
CORS_EXPOSED = ["ETag", "Location"]


@dataclass
class Runtime:
    """The moving parts of a running service, reachable from routes as `app.state.runtime`."""

    settings: ServiceSettings
    app: ServiceApplication
    writer: CommandWriter
    link: NatsLink
    relay: Relay
    consumers: list[Consumer] = field(default_factory=list)
    # Service-specific parts the routes need (a consumer's view, say), by name.
    parts: dict[str, Any] = field(default_factory=dict)
    # Service-specific background loops, run while the service runs.
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    extra_checks: list[Check] = field(default_factory=list)

    async def wait_for_position(self, positions: str | list[str] | None) -> None:
        """Read-your-writes across services: wait (bounded) until this service has applied
        the events of other services up to `positions` (each `<service>:<sequence>`)."""
        if positions is None:
            return
        for position in [positions] if isinstance(positions, str) else positions:
            await self._wait_for_one(position)

    async def _wait_for_one(self, position: str) -> None:
        service, _, sequence = position.partition(":")
        if service not in DEFAULT_PORTS:
            raise InvalidValue(
                f"min_position: there is no service {service!r}", field="min_position"
            )
        if service == self.settings.service:
            return  # our own store is the source of truth: every answered position is in it
        followers = [c for c in self.consumers if c.follows(service)]
        if not followers:
            raise InvalidValue(
                f"min_position: this service does not consume {service} events",
                field="min_position",
            )
        timeout = self.settings.read_wait_timeout_s
        for consumer in followers:
            if not await consumer.wait_for(f"okr/{service}", int(sequence), timeout):
                at = consumer.positions.get(f"okr/{service}", 0)
                behind = "" if at < int(sequence) else ", with earlier events still to come"
                raise NotYetKnown(
                    f"This service has not yet applied {position} (it is at "
                    f"{service}:{at}{behind}); retry shortly"
                )


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def create_service(
    settings: ServiceSettings,
    application_class: type[ServiceApplication],
    routers: list[APIRouter],
    *,
    title: str,
    description: str,
    on_runtime: Callable[[Runtime], None] | None = None,
    lean: list[LeanCommand] | None = None,
) -> FastAPI:
    service = settings.service

    @asynccontextmanager
    async def lifespan(http: FastAPI) -> AsyncIterator[None]:
        # Before anything else: a second process on this store does not start (StoreInUse).
        lock = await asyncio.to_thread(lock_store, settings)
        try:
            async with _serving(http, lock):
                yield
        finally:
            await asyncio.to_thread(lock.release)

    @asynccontextmanager
    async def _serving(http: FastAPI, lock: StoreLock) -> AsyncIterator[None]:
        es_app = await asyncio.to_thread(application_class, store_env(settings))
        writer = CommandWriter(
            es_app,
            service,
            max_batch=settings.writer_max_batch,
            cache_size=settings.aggregate_cache_size,
        )
        link = NatsLink.for_settings(settings, f"okr-{service}")
        relay = Relay(
            es_app,
            service,
            link,
            stream=settings.stream_name,
            batch_size=settings.relay_batch_size,
            poll_interval=settings.relay_poll_interval_s,
            publish_timeout=settings.relay_publish_timeout_s,
        )
        # Every save hands its committed events to the relay (the writer's and the policies').
        es_app.on_recorded.append(relay.offer)
        runtime = Runtime(settings, es_app, writer, link, relay)
        if on_runtime is not None:
            on_runtime(runtime)
        http.state.runtime = runtime
        writer.start()
        await link.start()
        await relay.start()
        for consumer in runtime.consumers:
            await consumer.start()
        tasks = [asyncio.create_task(loop()) for loop in runtime.background]
        if isinstance(lock, PostgresStoreLock):
            tasks.append(asyncio.create_task(_keep(lock)))
        try:
            yield
        finally:
            for task in tasks:
                await stop_task(task)
            for consumer in runtime.consumers:
                await consumer.stop()
            await relay.stop()
            await asyncio.to_thread(writer.stop)
            await link.close()
            await asyncio.to_thread(es_app.close)

    http = FastAPI(
        title=title,
        description=description,
        version="1.0.0",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
    )
    http.state.verifier = token_verifier(settings)
    install_error_handlers(http)
    for router in routers:
        document_headers(router)
        http.include_router(router)
    http.include_router(operations_router(_checks(http)))
    # Innermost first (each one added wraps the ones before): metrics see every response,
    # including 413s and refused preflights; lean commands run inside every other layer.
    if lean:
        http.add_middleware(LeanCommandMiddleware, http=http, commands=lean, routers=routers)
    http.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    http.add_middleware(RequestContextMiddleware)
    if settings.cors_origin_list:
        # Tokens travel in the Authorization header, never in cookies: credentials mode off.
        http.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSED,
            max_age=600,
        )
    http.add_middleware(MetricsMiddleware, service=service)
    return http


async def _keep(lock: PostgresStoreLock) -> None:
    """Check the store lock's connection while the service runs (shared/exclusive.py)."""
    while True:
        await asyncio.sleep(CHECK_EVERY_S)
        await asyncio.to_thread(lock.check)


def token_verifier(settings: ServiceSettings) -> TokenVerifier:
    """The organisation's identity provider when its JWKS URL is set, else the shared secret."""
    if settings.jwks_url:
        if not (settings.jwt_issuer and settings.jwt_audience):
            raise RuntimeError("OKR_JWKS_URL needs OKR_JWT_ISSUER and OKR_JWT_AUDIENCE")
        return IdentityProvider(
            settings.jwks_url, issuer=settings.jwt_issuer, audience=settings.jwt_audience
        )
    return SharedSecret(settings.jwt_secret_value())


def _checks(http: FastAPI) -> list[Check]:
    def runtime() -> Runtime:
        rt: Runtime = http.state.runtime
        return rt

    async def store() -> str | None:
        await asyncio.to_thread(runtime().app.ping)
        return None

    async def nats() -> str | None:
        return None if runtime().link.connected else "not connected"

    async def relay() -> str | None:
        r = runtime().relay
        stuck = r.stuck_for()
        if stuck > RELAY_STUCK_AFTER_S:
            return f"no progress for {stuck:.0f}s ({r.last_error or 'backlog not draining'})"
        return None

    async def consumers() -> str | None:
        failures = []
        for consumer in runtime().consumers:
            stuck = consumer.stuck_for()
            if stuck > CONSUMER_STUCK_AFTER_S:
                why = consumer.last_error or f"{consumer.pending} messages waiting"
                failures.append(f"{consumer.durable}: no progress for {stuck:.0f}s ({why})")
        for check in runtime().extra_checks:
            failure = await check.run()
            if failure:
                failures.append(f"{check.name}: {failure}")
        return "; ".join(failures) or None

    return [
        Check("store", store),
        Check("nats", nats),
        Check("relay", relay),
        Check("consumers", consumers),
    ]

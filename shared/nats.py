"""NATS: a connection that keeps trying, and the one declaration of the `OKR` stream.

Every process connects through `connect_options`: the server list of `OKR_NATS_URL` (one URL,
or a cluster's URLs separated by commas), and the credentials of `OKR_NATS_USER` /
`OKR_NATS_PASSWORD` or `OKR_NATS_CREDS`. With a user, the process takes its reply subjects
under `_INBOX.<user>.` rather than `_INBOX.`, so the server can let each user subscribe to its
own replies only (deploy/nats/auth.conf). URLs are logged through `redact`, never with a
password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared import contract
from shared.settings import Settings
from shared.tasks import stop_task

log = logging.getLogger(__name__)

INBOX = "_INBOX"
REFUSAL_LOG_INTERVAL_S = 60.0
# A user name that can be one token of a subject (no dots, spaces or wildcards).
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def server_urls(url: str) -> list[str]:
    """The servers of `OKR_NATS_URL`: one URL, or several separated by commas."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("OKR_NATS_URL names no server")
    return servers


def redact(url: str) -> str:
    """`url` (or a comma-separated list of them) fit for logs: any password replaced by ***."""
    shown = []
    for server in url.split(","):
        server = server.strip()
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        if parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[1]
            parts = parts._replace(netloc=f"{parts.username}:***@{host}")
            server = urlunsplit(parts)
        elif parts.username is not None:  # a token as the user part
            server = urlunsplit(parts._replace(netloc=f"***@{parts.netloc.rsplit('@', 1)[1]}"))
        shown.append(server)
    return ",".join(shown)


def inbox_prefix(user: str | None) -> str:
    """Where a process's replies arrive: `_INBOX.<user>` for a named user, else `_INBOX`."""
    if user and _TOKEN.match(user):
        return f"{INBOX}.{user}"
    return INBOX


def connect_options(
    url: str,
    *,
    user: str | None = None,
    password: str | None = None,
    creds: Path | str | None = None,
) -> dict[str, Any]:
    """What `nats.connect` needs to reach `url` as `user` (or with a credentials file)."""
    options: dict[str, Any] = {"servers": server_urls(url), "inbox_prefix": inbox_prefix(user)}
    if user:
        options["user"] = user
        options["password"] = password or ""
    if creds:
        options["user_credentials"] = str(creds)
    return options


def _credentials(settings: Settings) -> dict[str, Any]:
    password = settings.nats_password
    return {
        "user": settings.nats_user,
        "password": password.get_secret_value() if password is not None else None,
        "creds": settings.nats_creds,
    }


def settings_options(settings: Settings) -> dict[str, Any]:
    """`connect_options` from the `OKR_NATS_*` settings."""
    return connect_options(settings.nats_url, **_credentials(settings))


async def connect(settings: Settings, **options: Any) -> Client:
    """One connection as the settings say (servers and credentials), plus `options`."""
    return await nats.connect(**settings_options(settings), **options)


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


_PREVIOUS = contract.PREVIOUS_HEADER.encode()

# What may not appear in a subject (it would end the protocol line's field or the line).
_NOT_IN_SUBJECT = re.compile(r"[ \t\r\n]")


class JetStreamPublisher:
    """Messages for one stream (`Nats-Expected-Stream`), each with its `Nats-Msg-Id` and a
    reply subject `<reply_prefix><token>`, written into the connection's outgoing buffer many
    at a time.

    nats-py's `publish` checks the subjects and builds the header block on every call, then
    appends the command to the buffer: about 5.9 µs per message with two headers on this
    project's hosts, against 1.3 µs for the same bytes built here, with the subjects checked
    once each. The relay publishes tens of thousands of messages a second from the process
    that serves the commands, so it writes them this way. The buffer, its flusher task and
    its limits stay nats-py's: `send` does what the end of `publish` does (nats-py is pinned;
    `tests/integration/test_nats_publisher.py` holds the bytes to what `publish` writes)."""

    def __init__(self, nc: Client, stream: str, reply_prefix: str) -> None:
        if not stream or _NOT_IN_SUBJECT.search(stream):
            raise ValueError(f"not a stream name: {stream!r}")
        self.nc = nc
        self._reply_prefix = self._checked(reply_prefix)
        self._stream_header = f"Nats-Expected-Stream: {stream}\r\n\r\n".encode()
        self._subjects: dict[str, bytes] = {}

    @staticmethod
    def _checked(subject: str) -> bytes:
        if not subject or _NOT_IN_SUBJECT.search(subject):
            raise nats_errors.BadSubjectError
        return subject.encode()

    def command(
        self, subject: str, token: int, msg_id: str, body: bytes, previous: int | None = None
    ) -> bytes:
        """One message as the protocol writes it (`HPUB`); with `previous`, the header
        `Okr-Previous-Sequence` (the sequence of the event before it in its log)."""
        encoded = self._subjects.get(subject)
        if encoded is None:
            encoded = self._subjects[subject] = self._checked(subject)
        if "\r" in msg_id or "\n" in msg_id or msg_id != msg_id.strip():
            raise nats_errors.BadHeaderError(msg_id)
        if previous is None:
            headers = b"NATS/1.0\r\nNats-Msg-Id: %b\r\n%b" % (msg_id.encode(), self._stream_header)
        else:
            headers = b"NATS/1.0\r\nNats-Msg-Id: %b\r\n%b: %d\r\n%b" % (
                msg_id.encode(),
                _PREVIOUS,
                previous,
                self._stream_header,
            )
        size = len(headers) + len(body)
        if size > self.nc.max_payload:
            raise nats_errors.MaxPayloadError
        return b"HPUB %b %b%d %d %d\r\n%b%b\r\n" % (
            encoded,
            self._reply_prefix,
            token,
            len(headers),
            size,
            headers,
            body,
        )

    async def send(self, commands: Sequence[bytes]) -> None:
        """Hand whole commands to the connection as `publish` hands each of its own: into the
        buffer (flushed at once past its limit), then a nudge to the flusher task."""
        await _send(self.nc, commands)


def _ready(nc: Client, size: int) -> None:
    """Raise what `publish` raises when `size` bytes of commands cannot be sent now: a closed
    or draining connection, or, while reconnecting, a full (or no) buffer."""
    if nc.is_closed:
        raise nats_errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise nats_errors.ConnectionDrainingError
    if not nc.is_connected and (
        nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size
    ):
        raise nats_errors.OutboundBufferLimitError


async def _send(nc: Client, commands: Sequence[bytes]) -> None:
    """Hand whole commands to the connection as `publish` hands each of its own."""
    data = b"".join(commands)
    _ready(nc, len(data))
    nc.stats["out_msgs"] += len(commands)
    nc.stats["out_bytes"] += len(data)  # headers and protocol lines included
    await nc._send_command(data)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


async def acknowledge_all(nc: Client, msgs: Sequence[Msg]) -> None:
    """Acknowledge JetStream messages as `Msg.ack` does each, in one write to the connection.

    `ack` is a `publish` of an empty message to the message's reply subject: about 3 µs each,
    a tenth of what a consumer's event loop spends per message through a catch-up or a
    rebuild. The same commands are built here (the bytes are held to `ack`'s by
    `tests/integration/test_nats_publisher.py`) and handed to the connection together; what
    `ack` refuses (no reply subject, a message settled already) is refused before anything is
    sent, as is a reply subject the protocol cannot carry."""
    commands = []
    for msg in msgs:
        reply = msg.reply
        if not reply:
            raise nats_errors.NotJSMessageError
        if msg._ackd:
            raise nats_errors.MsgAlreadyAckdError(msg)
        if _NOT_IN_SUBJECT.search(reply):
            raise nats_errors.BadSubjectError
        commands.append(b"PUB %b  0\r\n\r\n" % reply.encode())
    if not commands:
        return
    await _send(nc, commands)
    for msg in msgs:
        msg._ackd = True


class NatsLink:
    """One NATS connection for a service, (re)connecting in the background.

    A service starts and takes commands while NATS is down: the store is the source of truth,
    and the relay catches up when the link comes back.
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        user: str | None = None,
        password: str | None = None,
        creds: Path | str | None = None,
    ) -> None:
        self.url = url
        self.name = name
        self._options = connect_options(url, user=user, password=password, creds=creds)
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_refusal = ("", 0.0)

    @classmethod
    def for_settings(cls, settings: Settings, name: str) -> NatsLink:
        """A link to the servers of `OKR_NATS_URL` with the `OKR_NATS_*` credentials."""
        return cls(settings.nats_url, name, **_credentials(settings))

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
                    **self._options,
                    name=self.name,
                    connect_timeout=2,
                    reconnect_time_wait=0.5,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    error_cb=self._on_error,
                )
            except Exception as e:
                log.warning(
                    "cannot connect to NATS at %s (%s); retrying", redact(self.url), _describe(e)
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.js = self.nc.jetstream(timeout=5)
            self._ready.set()
            return

    async def _on_error(self, e: Exception) -> None:
        # A refusal (wrong credentials, a subject the user may not use) is a configuration
        # error worth seeing, once a minute at most while it repeats; the rest (connection
        # trouble while NATS restarts) is noise the reconnect loop deals with.
        if not _refused(e):
            log.debug("NATS: %s", e)
            return
        text, at = self._last_refusal
        now = time.monotonic()
        if str(e) != text or now - at > REFUSAL_LOG_INTERVAL_S:
            self._last_refusal = (str(e), now)
            log.warning("NATS refused %s: %s", self.name, e)

    async def close(self) -> None:
        await stop_task(self._task)
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.close()


def _refused(e: Exception) -> bool:
    text = str(e).lower()
    return "permissions violation" in text or "authorization" in text


def _describe(e: Exception) -> str:
    """An exception for a log line: its message, or its type when it has none."""
    return str(e) or type(e).__name__

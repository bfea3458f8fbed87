"""Structured logs: one JSON object per line, carrying who and which conversation.

Every log record gets `service`, and — when there is one — the `correlation_id`,
`causation_id`, `request_id` and `actor` of the work it belongs to, taken from:

- the command context (`shared.domain.command_context`): set around every command, in the HTTP
  request and in the writer thread, and around every event a policy reacts to;
- the log context (`bind`): set by the HTTP middleware for the whole request, and by consumers
  around each event they apply (the event's correlation id, its id as the causation).

So a change can be followed from the request that asked for it, through the events it caused,
into every consumer that applied them: `grep` one correlation id across the services' logs.
JSON by python-json-logger; `OKR_LOG_FORMAT=text` gives plain lines for a terminal. Tokens
and passwords are never put in a log record: the fields are ids and the actor's name only.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from shared.domain import active_context

CONTEXT_FIELDS = ("correlation_id", "causation_id", "request_id", "actor", "event_id")

_log_context: ContextVar[dict[str, str] | None] = ContextVar("okr_log_context", default=None)
_service = "okr"
_installed = False


def bind(**fields: str | None) -> _Bound:
    """Add `fields` to every record logged inside the block (this task or thread only)."""
    return _Bound(fields)


class _Bound:
    """`bind`'s block: a class, not a generator made into a context manager, since consumers
    enter one around every event they apply (0.9 µs against 1.5 µs)."""

    __slots__ = ("_fields", "_token")

    def __init__(self, fields: dict[str, str | None]) -> None:
        self._fields = fields

    def __enter__(self) -> None:
        current = _log_context.get()
        fields = {k: v for k, v in self._fields.items() if v is not None}
        self._token = _log_context.set({**current, **fields} if current else fields)

    def __exit__(self, *exc: object) -> None:
        _log_context.reset(self._token)


def context_fields() -> dict[str, str]:
    fields = dict(_log_context.get() or {})
    command = active_context()
    if command is not None:
        fields.setdefault("actor", command.actor)
        fields.setdefault("correlation_id", command.correlation_id)
        fields.setdefault("causation_id", command.causation_id)
    return fields


def _install_record_factory() -> None:
    """Stamp the context on every record, whichever handler (or test) receives it."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.service = _service
        for key, value in context_fields().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return record

    logging.setLogRecordFactory(factory)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if hasattr(record, k)]
        return f"{line} [{' '.join(ids)}]" if ids else line


def configure(service: str, *, fmt: str = "json", level: str = "INFO") -> None:
    """Send every logger's records to stderr, as JSON lines (or text), with the context."""
    global _service
    _service = service
    _install_record_factory()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


_install_record_factory()

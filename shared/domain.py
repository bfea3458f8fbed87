"""What every service's domain shares: the command context stamped on each event, the base
aggregate that stamps it, and one family of rule errors.

Imports only the standard library, `eventsourcing.domain` and `uuid_utils` (time-ordered ids),
like the domains themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate
from uuid_utils.compat import uuid7


def time_ordered_id() -> UUID:
    """A new id that sorts after the ones made before it (UUIDv7, RFC 9562: the time in
    milliseconds, then a counter and random bits).

    For ids minted at a high rate and used as keys (check-ins): each store then adds to the
    end of its indexes instead of at random places in them, so an insert touches the few
    pages it touched last time rather than new ones, however many rows there are already.
    """
    return uuid7()


@dataclass(frozen=True)
class CommandContext:
    """Who asked for a change, and which conversation it belongs to.

    Every event records these, so the audit trail and every subscriber can say who changed
    what, and trace a change back through the events that caused it.
    """

    actor: str
    correlation_id: str
    causation_id: str
    # What the actor may do (from the token): checked by `shared.permissions`, never stored.
    roles: frozenset[str] = frozenset()
    teams: frozenset[str] = frozenset()


_context: ContextVar[CommandContext | None] = ContextVar("okr_command_context", default=None)


@contextmanager
def command_context(context: CommandContext) -> Iterator[CommandContext]:
    """Run a block of domain work on behalf of `context`."""
    token = _context.set(context)
    try:
        yield context
    finally:
        _context.reset(token)


def active_context() -> CommandContext | None:
    """The command context of the work in progress, if any (for logs)."""
    return _context.get()


def current_context() -> CommandContext:
    context = _context.get()
    if context is None:
        # An event without an actor would be an unattributed change: refuse it.
        raise RuntimeError("Domain events can only be triggered inside a command_context()")
    return context


def _context_fields() -> dict[str, str]:
    context = current_context()
    return {
        "actor": context.actor,
        "correlation_id": context.correlation_id,
        "causation_id": context.causation_id,
    }


class OkrAggregate(Aggregate):
    """Base aggregate: every event it triggers carries the command context."""

    class Event(Aggregate.Event):
        actor: str
        correlation_id: str
        causation_id: str

    @classmethod
    def _create(cls, event_class: Any, **kwargs: Any) -> Any:
        kwargs.update(_context_fields())
        return super()._create(event_class, **kwargs)

    def trigger_event(self, event_class: Any, **kwargs: Any) -> None:
        kwargs.update(_context_fields())
        super().trigger_event(event_class, **kwargs)


class DomainError(Exception):
    """A command that the domain refuses. Nothing is recorded."""

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidValue(DomainError):
    """A value that can never be right for this field (HTTP 422)."""


class RuleBroken(DomainError):
    """A command that conflicts with the current state (HTTP 409)."""


class NotFound(DomainError):
    """An unknown id (HTTP 404)."""


class NotYetKnown(DomainError):
    """Refers to something another service created that this one has not heard of yet.
    Safe to retry once the events have arrived (HTTP 409 with Retry-After)."""


class Forbidden(DomainError):
    """The actor lacks the permission the command needs (HTTP 403). Nothing is recorded."""

    def __init__(self, permission: str, detail: str) -> None:
        super().__init__(detail)
        self.permission = permission


class VersionMismatch(DomainError):
    """The client's expected version (If-Match) is not the current one (HTTP 412)."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(
            f"The resource is at version {actual}, not the expected version {expected}"
        )
        self.expected = expected
        self.actual = actual


def check(condition: bool, error: type[DomainError], detail: str, field: str | None = None) -> None:
    """Raise `error` unless `condition` holds: the one way rules are written."""
    if not condition:
        raise error(detail, field=field)

"""The public event contract (DESIGN §4): subjects, types and the CloudEvents envelope.

Imports only the standard library (and orjson for speed); no service code. A stored domain
event becomes one message: subject `okr.<service>.<aggregate>.<event>`, body a CloudEvents 1.0
JSON envelope, header `Nats-Msg-Id: <source>:<sequence>`. The relays add the header
`Okr-Previous-Sequence`: the sequence of the event before it in its service's log (0 for the
first), so that a subscriber of a whole source can tell that one is still to come when the
stream holds them out of order (`PREVIOUS_HEADER`).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import fields
from datetime import datetime
from functools import cache
from typing import Any

import orjson

SPEC_VERSION = "1.0"
# The header naming the sequence of the event before this one in its service's log. Sequences
# may have gaps, so without it a subscriber cannot tell a gap from an event still to come.
PREVIOUS_HEADER = "Okr-Previous-Sequence"
CONTENT_TYPE = "application/json"
# Event ids are derived, not random: republishing the same stored event gives the same id.
EVENT_ID_NAMESPACE = uuid.UUID("7d4a3c1e-2b5f-5e8a-9c0d-4f6b8a2e1d3c")
_EVENT_ID_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes
# A UUID as `str(UUID)` writes it: an aggregate's id in an envelope's `subject`, as the relays
# publish it (and PostgreSQL's text of its `uuid` type).
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

META_FIELDS = frozenset(
    {
        "originator_id",
        "originator_version",
        "originator_topic",
        "timestamp",
        "actor",
        "correlation_id",
        "causation_id",
    }
)

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def event_names(event_class: type) -> tuple[str, str]:
    """(aggregate, event) in snake case, from e.g. `KeyResult.TargetAdjusted`."""
    aggregate, _, name = event_class.__qualname__.rpartition(".")
    return snake(aggregate.split(".")[-1]), snake(name)


@cache  # per event class: the relay asks for every event it publishes
def subject_for(service: str, event_class: type) -> str:
    aggregate, name = event_names(event_class)
    return f"okr.{service}.{aggregate}.{name}"


@cache
def type_for(service: str, event_class: type) -> str:
    version = getattr(event_class, "class_version", 1)
    return f"{subject_for(service, event_class)}.v{version}"


def event_id(originator_id: uuid.UUID | str, version: int) -> str:
    """`str(uuid5(EVENT_ID_NAMESPACE, "<originator id>:<version>"))`, spelled out: the relay
    computes one per event it publishes, and this takes a third of the time of `uuid5`."""
    # SHA-1 because UUID version 5 is defined with it; an id, not a security measure.
    h = hashlib.sha1(
        _EVENT_ID_NAMESPACE_BYTES + f"{originator_id}:{version}".encode(), usedforsecurity=False
    ).hexdigest()
    # The version digit is 5; the variant's two top bits are 10 (RFC 4122): 8, 9, a or b.
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


# Ids of what the quarter shift creates: derived from what it continues, so that the review
# service can name them in advance and the goals service creates each exactly once.
CARRY_OVER_NAMESPACE = uuid.UUID("3f2c8e61-9a4b-5d7e-8c1f-2b6a9d0e4f17")


def carried_objective_id(review_id: uuid.UUID | str, objective_id: uuid.UUID | str) -> uuid.UUID:
    return uuid.uuid5(CARRY_OVER_NAMESPACE, f"objective:{review_id}:{objective_id}")


def carried_key_result_id(
    carried_objective: uuid.UUID | str, key_result_id: uuid.UUID | str
) -> uuid.UUID:
    return uuid.uuid5(CARRY_OVER_NAMESPACE, f"key-result:{carried_objective}:{key_result_id}")


# Who consumes what (durable consumer `<service>-<name>` on these subjects). The services
# subscribe with exactly these, and the AsyncAPI document lists them.
SUBSCRIPTIONS: dict[str, tuple[str, list[str]]] = {
    "goals": ("carry-over", ["okr.reviews.>"]),
    "checkins": ("catalogue", ["okr.goals.>"]),
    "reviews": ("catalogue", ["okr.goals.>", "okr.checkins.>"]),
    "projections": ("views", ["okr.>"]),
}


def public_data(event: Any) -> dict[str, Any]:
    """The event's own fields: everything but identity, time and the command context."""
    cls: Any = type(event)  # classes are hashable; typing's `type` is not `Hashable`
    return {name: getattr(event, name) for name in public_fields(cls)}


@cache
def public_fields(event_class: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(event_class) if f.name not in META_FIELDS)


def msg_id(source: str, sequence: int) -> str:
    return f"{source}:{sequence}"


def envelope(service: str, sequence: int, event: Any) -> dict[str, Any]:
    """The CloudEvents envelope of a stored domain event at `sequence` in its service's log."""
    timestamp: datetime = event.timestamp
    cls: Any = type(event)
    return {
        "specversion": SPEC_VERSION,
        "id": event_id(event.originator_id, event.originator_version),
        "source": f"okr/{service}",
        "type": type_for(service, cls),
        "subject": str(event.originator_id),
        "time": timestamp.isoformat(),
        "datacontenttype": CONTENT_TYPE,
        "data": public_data(event),
        "sequence": sequence,
        "aggregateversion": event.originator_version,
        "actor": event.actor,
        "correlationid": event.correlation_id,
        "causationid": event.causation_id,
    }


def encode(body: dict[str, Any]) -> bytes:
    # orjson writes UUIDs, dates and datetimes as ISO strings.
    return orjson.dumps(body)

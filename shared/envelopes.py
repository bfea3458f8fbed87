"""The messages of stored events: what the relay publishes for each notification of the log.

The contract defines a message from the domain event (`contract.envelope`). Building that
object first, as the library's mapper does (its JSON decoder with an object hook per dict,
then the event object), was most of the relay's own work. `Envelopes` builds the same bytes
from the stored JSON directly: parsed by orjson, with the library's transcodings undone in
place (the same `Transcoding.decode`, so dates, datetimes and anything registered come out
as the objects the mapper would give; UUIDs, the common case, straight to their string).
Whatever it is not sure of goes the mapper's way instead: an event stored at an older class
version (the class's upcasts run on the decoded state), a cipher or compressor, JSON that
only Python's parser accepts (NaN, integers beyond 64 bits), a missing field. Both
ways give the same bytes (tests/unit/test_envelopes.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import Mapper, Notification, Transcoding
from eventsourcing.utils import resolve_topic

from shared import contract
from shared.store import Logged

_HEX32 = re.compile(r"[0-9a-f]{32}")
# A UTC time as `datetime.isoformat()` writes it (microseconds only when not zero).
_ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00")
_NESTED = (dict, list)
# orjson reads an integer beyond 64 bits as a float (the mapper's way keeps it an integer,
# which orjson then refuses to write): a float this large goes the mapper's way.
_BIG = float(2**63)


def _dashed(hex32: str) -> str:
    """32 lower-case hex digits as `str(UUID)` writes them."""
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"


def _uuid_text(oid: UUID | str) -> str:
    """An originator's id as `str(UUID)` writes it, from a UUID or from the text a store keeps
    (32 hex digits on SQLite, the dashed form on PostgreSQL), without building a `UUID` where
    the text is already one."""
    if type(oid) is str:
        if _HEX32.fullmatch(oid):
            return _dashed(oid)
        if contract.UUID_TEXT.fullmatch(oid):
            return oid
    return str(oid if isinstance(oid, UUID) else UUID(oid))


class _NotSure(Exception):
    """The stored state holds something only the mapper's way is sure to render alike."""


@dataclass(frozen=True)
class _Kind:
    """What every message of one event class shares."""

    subject: str
    type: str
    version: int
    fields: tuple[str, ...]


class Envelopes:
    def __init__(self, mapper: Mapper[Any], service: str) -> None:
        self.mapper = mapper
        self.service = service
        self.source = f"okr/{service}"
        names = getattr(mapper.transcoder, "names", None)  # a JSONTranscoder's
        self._transcodings: dict[str, Transcoding] = dict(names or {})
        self._direct = names is not None and mapper.cipher is None and mapper.compressor is None
        self._kinds: dict[str, _Kind] = {}

    def message(self, n: Notification | Logged) -> tuple[str, bytes]:
        """(subject, body) of the notification's message (one offered by a save, or read from
        the log)."""
        kind = self._kinds.get(n.topic)
        if kind is None:
            kind = self._kinds[n.topic] = self._kind(n.topic)
        if self._direct:
            # Anything it is not sure of, or fails at, goes the mapper's way, which raises its
            # own errors.
            try:
                return kind.subject, self._body(kind, n)
            except Exception:  # noqa: S110
                pass
        # A `Logged` row has what the mapper reads; it turns the originator's id into what
        # the event class declares.
        event = self.mapper.to_domain_event(n)  # type: ignore[arg-type]
        return (
            contract.subject_for(self.service, type(event)),
            contract.encode(contract.envelope(self.service, n.id, event)),
        )

    def _kind(self, topic: str) -> _Kind:
        cls = resolve_topic(topic)
        return _Kind(
            subject=contract.subject_for(self.service, cls),
            type=contract.type_for(self.service, cls),
            version=getattr(cls, "class_version", 1),
            fields=contract.public_fields(cls),
        )

    def _body(self, kind: _Kind, n: Notification | Logged) -> bytes:
        state = orjson.loads(n.state)
        if type(state) is not dict or state.get("class_version", 1) != kind.version:
            raise _NotSure  # not an event's state, or one to upcast: the mapper's way
        value = self._value
        try:
            # Most fields are plain JSON values: only dicts and lists need a look inside.
            data = {}
            for name in kind.fields:
                v = state[name]
                t = type(v)
                if t is dict:
                    # Mostly a UUID (the transcoding's dict): turned to its text right here.
                    d = v.get("_data_") if len(v) == 2 and v.get("_type_") == "uuid_hex" else None
                    if type(d) is str and _HEX32.fullmatch(d):
                        v = _dashed(d)
                    else:
                        v = value(v)
                elif t is list:
                    if v:
                        v = value(v)
                elif t is float and not -_BIG < v < _BIG:
                    raise _NotSure  # perhaps an integer too big for orjson, read as a float
                data[name] = v
            stamp = state["timestamp"]
            actor = state["actor"]
            correlation_id = state["correlation_id"]
            causation_id = state["causation_id"]
        except KeyError:
            raise _NotSure from None
        if (
            type(actor) in _NESTED
            or type(correlation_id) in _NESTED
            or type(causation_id) in _NESTED
        ):
            raise _NotSure
        originator = _uuid_text(n.originator_id)
        return contract.encode(
            {
                "specversion": contract.SPEC_VERSION,
                "id": contract.event_id(originator, n.originator_version),
                "source": self.source,
                "type": kind.type,
                "subject": originator,
                "time": self._time(stamp),
                "datacontenttype": contract.CONTENT_TYPE,
                "data": data,
                "sequence": n.id,
                "aggregateversion": n.originator_version,
                "actor": actor,
                "correlationid": correlation_id,
                "causationid": causation_id,
            }
        )

    def _time(self, stamp: Any) -> str:
        """The event's time as `datetime.isoformat()` writes the decoded timestamp."""
        if type(stamp) is dict and len(stamp) == 2 and stamp.get("_type_") == "datetime_iso":
            text = stamp["_data_"]
            if type(text) is str and _ISO_UTC.fullmatch(text):
                return text  # already what `isoformat()` writes for it
        timestamp = self._value(stamp)
        if type(timestamp) is not datetime:
            raise _NotSure
        return timestamp.isoformat()

    def _value(self, value: Any) -> Any:
        """A value of the parsed state as the library's decoder gives it (its object hook
        runs on the innermost dicts first)."""
        t = type(value)
        if t is dict:
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                name, data = value["_type_"], value["_data_"]
                if name == "uuid_hex" and type(data) is str and _HEX32.fullmatch(data):
                    return _dashed(data)
                transcoding = self._transcodings.get(name)
                if transcoding is None:
                    raise _NotSure  # the mapper raises its own error for it
                return transcoding.decode(self._value(data))
            return {k: self._value(v) for k, v in value.items()}
        if t is list:
            return [self._value(v) for v in value]
        if t is float and not -_BIG < value < _BIG:
            raise _NotSure
        return value

"""One public model per event type: what `data` holds in each message on `okr.>`.

These models are the contract that other systems code against. They are exported as JSON
Schema files under `docs/contract/` and as the AsyncAPI document (`python -m shared contract`
writes both; a test fails when the committed files and these models differ), and every
consumer of ours validates what it receives against them before applying it.

Versioning (docs/subscribing.md): an additive change (a new optional field) keeps the version,
so readers ignore fields they do not know; any other change publishes `.v<N+1>`, keeps the old
model here (marked deprecated, for replays of old messages), and adds an upcast in
`shared.contract.upcasts` used by the store and by consumers alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from shared.contract.upcasts import upcast

# --- field types ------------------------------------------------------------------------------

Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Title = Annotated[str, StringConstraints(min_length=1, max_length=300)]
Text = Annotated[str, StringConstraints(max_length=5000)]
Reason = Annotated[str, StringConstraints(max_length=2000)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-1e15, le=1e15)]
Confidence = Annotated[
    int, Field(strict=True, ge=0, le=10, description="0 (no chance) to 10 (certain)")
]
Score = Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)]
Item = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
Items = Annotated[list[Item], Field(max_length=50)]
Kind = Literal["number", "percent", "currency", "boolean"]
ReflectionKind = Literal["went_well", "learned", "do_differently", "do_more_of"]
Decision = Literal["carry_over", "drop", "done"]


class EventData(BaseModel):
    """Base of every event's data. Unknown fields are ignored: additive changes keep `.vN`."""

    model_config = ConfigDict(extra="ignore", frozen=True)


@dataclass(frozen=True)
class EventType:
    """One published event type: where it goes and what its data looks like."""

    service: str
    aggregate: str
    event: str
    version: int
    model: type[EventData]
    summary: str
    deprecated: bool = False

    @property
    def subject(self) -> str:
        return f"okr.{self.service}.{self.aggregate}.{self.event}"

    @property
    def type(self) -> str:
        return f"{self.subject}.v{self.version}"


EVENT_TYPES: dict[str, EventType] = {}


def published(
    service: str, aggregate: str, event: str, version: int = 1, *, deprecated: bool = False
) -> Any:
    """Register the decorated model as the data of `okr.<service>.<aggregate>.<event>.v<N>`."""

    def register(model: type[EventData]) -> type[EventData]:
        summary = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
        spec = EventType(service, aggregate, event, version, model, summary, deprecated)
        EVENT_TYPES[spec.type] = spec
        return model

    return register


# --- goals ------------------------------------------------------------------------------------


@published("goals", "cycle", "scheduled")
class CycleScheduled(EventData):
    """A planning period (usually a quarter) was scheduled. The event's subject is its id."""

    name: Name
    starts_on: date
    ends_on: date


@published("goals", "cycle", "started")
class CycleStarted(EventData):
    """A scheduled cycle became active: check-ins can begin."""


@published("goals", "cycle", "closed")
class CycleClosed(EventData):
    """An active cycle closed: its objectives, key results and check-ins no longer change."""

    reason: Reason | None = None


@published("goals", "objective", "created")
class ObjectiveCreated(EventData):
    """An objective was created for a team in a cycle, optionally aligned to a parent."""

    cycle_id: UUID
    title: Title
    description: Text
    owner: Name
    team: Name
    parent_id: UUID | None = Field(description="The objective this one aligns to, if any")


class Lesson(BaseModel):
    kind: ReflectionKind
    text: Text


@published("goals", "objective", "carried_over")
class ObjectiveCarriedOver(EventData):
    """Follows `objective.created` when a finalised review carried an objective into the next
    cycle: links it to the objective it continues, the review, and the review's lessons."""

    origin_objective_id: UUID
    origin_cycle_id: UUID
    review_id: UUID
    lessons: list[Lesson]


@published("goals", "objective", "retitled")
class ObjectiveRetitled(EventData):
    """An objective's title changed."""

    title: Title
    previous_title: Title
    reason: Reason | None = None


@published("goals", "objective", "described")
class ObjectiveDescribed(EventData):
    """An objective's description changed."""

    description: Text
    previous_description: Text
    reason: Reason | None = None


@published("goals", "objective", "owner_changed")
class ObjectiveOwnerChanged(EventData):
    """An objective changed hands."""

    owner: Name
    previous_owner: Name
    reason: Reason | None = None


@published("goals", "objective", "team_changed")
class ObjectiveTeamChanged(EventData):
    """An objective moved to another team."""

    team: Name
    previous_team: Name
    reason: Reason | None = None


@published("goals", "objective", "realigned")
class ObjectiveRealigned(EventData):
    """An objective was aligned to another parent, or detached (`parent_id` null)."""

    parent_id: UUID | None
    previous_parent_id: UUID | None
    reason: Reason | None = None


@published("goals", "objective", "archived")
class ObjectiveArchived(EventData):
    """An objective was archived: it stays in the history but takes no more changes."""

    reason: Reason | None = None


@published("goals", "key_result", "defined")
class KeyResultDefined(EventData):
    """A key result was defined under an objective. Progress runs from `start` to `target`
    (either direction); a boolean key result goes from 0 to 1."""

    objective_id: UUID
    cycle_id: UUID
    title: Title
    kind: Kind
    unit: Annotated[str, StringConstraints(max_length=50)]
    start: Number
    target: Number
    weight: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
    owner: Name


@published("goals", "key_result", "carried_over")
class KeyResultCarriedOver(EventData):
    """Follows `key_result.defined` for a key result carried into the next cycle; its start is
    the origin's last checked-in value."""

    origin_key_result_id: UUID
    origin_start: Number = Field(description="The start the origin key result had")


@published("goals", "key_result", "target_adjusted")
class KeyResultTargetAdjusted(EventData):
    """A key result's target moved; the reason is required."""

    target: Number
    previous_target: Number
    reason: Reason


@published("goals", "key_result", "retitled")
class KeyResultRetitled(EventData):
    """A key result's title changed."""

    title: Title
    previous_title: Title
    reason: Reason | None = None


@published("goals", "key_result", "owner_changed")
class KeyResultOwnerChanged(EventData):
    """A key result changed hands."""

    owner: Name
    previous_owner: Name
    reason: Reason | None = None


@published("goals", "key_result", "reweighted")
class KeyResultReweighted(EventData):
    """A key result's weight in its objective's progress changed."""

    weight: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
    previous_weight: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
    reason: Reason | None = None


@published("goals", "key_result", "removed")
class KeyResultRemoved(EventData):
    """A key result was removed from its objective; the reason is required."""

    reason: Reason


# --- checkins ---------------------------------------------------------------------------------


@published("checkins", "key_result_progress", "opened")
class KeyResultProgressOpened(EventData):
    """The first check-in of a key result opened its progress record (subject: a derived id,
    not the key result's)."""

    key_result_id: UUID
    objective_id: UUID
    cycle_id: UUID


@published("checkins", "key_result_progress", "checked_in")
class CheckedIn(EventData):
    """Someone checked in on a key result: its current value and their confidence."""

    check_in_id: UUID
    key_result_id: UUID
    number: Annotated[
        int, Field(strict=True, ge=1, description="1 for the key result's first check-in")
    ]
    value: Number
    confidence: Confidence
    note: Text
    blockers: Items


@published("checkins", "key_result_progress", "check_in_corrected")
class CheckInCorrected(EventData):
    """A check-in's value or confidence was corrected; the original stays on record."""

    check_in_id: UUID
    key_result_id: UUID
    value: Number
    confidence: Confidence
    previous_value: Number
    previous_confidence: Confidence
    reason: Reason


@published("checkins", "team_check_in", "held")
class MeetingHeld(EventData):
    """A team held its weekly check-in meeting (one per team, cycle and date)."""

    team: Name
    cycle_id: UUID
    held_on: date
    wins: Items
    learnings: Items
    blockers: Items
    priorities: Items


@published("checkins", "team_check_in", "amended", version=1, deprecated=True)
class MeetingAmendedV1(EventData):
    """Superseded by v2: a meeting's lists were amended; null means the list did not change."""

    wins: Items | None
    learnings: Items | None
    blockers: Items | None
    priorities: Items | None
    previous_wins: Items | None
    previous_learnings: Items | None
    previous_blockers: Items | None
    previous_priorities: Items | None
    reason: Reason


class ListChange(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: Items = Field(alias="from")
    to: Items


@published("checkins", "team_check_in", "amended", version=2)
class MeetingAmended(EventData):
    """A meeting's lists were amended: only the lists that changed, each from → to."""

    changes: dict[Literal["wins", "learnings", "blockers", "priorities"], ListChange] = Field(
        min_length=1
    )
    reason: Reason


# --- reviews ----------------------------------------------------------------------------------


class ReviewObjective(BaseModel):
    objective_id: UUID
    title: Title


class ReviewKeyResult(BaseModel):
    key_result_id: UUID
    objective_id: UUID
    title: Title
    kind: Kind
    start: Number
    target: Number
    last_value: Number | None = Field(description="Null when never checked in")
    progress: Score
    suggested_score: Score


@published("reviews", "cycle_review", "opened")
class ReviewOpened(EventData):
    """A team opened its review of a cycle (one per cycle and team): what it covers, with each
    key result's progress and suggested score as they stood."""

    cycle_id: UUID
    team: Name
    objectives: list[ReviewObjective]
    key_results: list[ReviewKeyResult]


@published("reviews", "cycle_review", "scored")
class ReviewScored(EventData):
    """A key result got its review score; one that differs from the suggestion has a comment."""

    key_result_id: UUID
    score: Score
    suggested_score: Score
    comment: Annotated[str, StringConstraints(max_length=2000)] | None
    previous_score: Score | None
    previous_comment: Annotated[str, StringConstraints(max_length=2000)] | None


@published("reviews", "cycle_review", "reflected")
class ReviewReflected(EventData):
    """A reflection was added to a review."""

    reflection_id: UUID
    kind: ReflectionKind
    text: Annotated[str, StringConstraints(min_length=1, max_length=5000)]


@published("reviews", "cycle_review", "carry_over_decided")
class CarryOverDecided(EventData):
    """What becomes of an objective after the cycle: carried over (into `next_cycle_id`),
    dropped, or done."""

    objective_id: UUID
    decision: Decision
    next_cycle_id: UUID | None
    previous_decision: Decision | None
    previous_next_cycle_id: UUID | None


class CarriedKeyResult(BaseModel):
    key_result_id: UUID
    start: Number = Field(description="Where the carried key result starts")


class FinalDecision(BaseModel):
    objective_id: UUID
    decision: Decision
    next_cycle_id: UUID | None
    key_results: list[CarriedKeyResult]


class FinalScore(BaseModel):
    key_result_id: UUID
    score: Score
    suggested_score: Score


@published("reviews", "cycle_review", "finalised")
class ReviewFinalised(EventData):
    """A review became final: every decision, every score and the lessons. The goals service
    carries objectives over into the next cycle from this event."""

    cycle_id: UUID
    team: Name
    decisions: list[FinalDecision]
    scores: list[FinalScore]
    lessons: list[Lesson]


# --- envelopes and checking -------------------------------------------------------------------

LATEST: dict[str, EventType] = {}
for _spec in EVENT_TYPES.values():
    if _spec.subject not in LATEST or LATEST[_spec.subject].version < _spec.version:
        LATEST[_spec.subject] = _spec


class UnknownEventType(ValueError):
    pass


def check_data(event_type: str, data: dict[str, Any]) -> tuple[EventType, dict[str, Any]]:
    """Validate `data` of an `event_type` message and lift it to the latest version.

    Returns the latest event type and the (upcast) data; raises `UnknownEventType` or pydantic's
    `ValidationError` when the message breaks the contract.
    """
    spec = EVENT_TYPES.get(event_type)
    if spec is None:
        raise UnknownEventType(f"unknown event type {event_type!r}")
    spec.model.model_validate(data)
    latest = LATEST[spec.subject]
    if latest is not spec:
        data = upcast(spec.subject, spec.version, latest.version, data)
        latest.model.model_validate(data)
    return latest, data


@cache
def envelope_model(spec: EventType) -> type[BaseModel]:
    """The CloudEvents envelope (DESIGN §4) of one event type, as a model."""
    fields: dict[str, Any] = {
        "specversion": (Literal["1.0"], ...),
        "id": (str, Field(description="The event's id: the same on every republish")),
        "source": (Literal[f"okr/{spec.service}"], ...),
        "type": (Literal[spec.type], ...),
        "subject": (UUID, Field(description=f"The {spec.aggregate}'s id")),
        "time": (datetime, Field(description="When the event was stored (ISO 8601, UTC)")),
        "datacontenttype": (Literal["application/json"], ...),
        "data": (spec.model, ...),
        "sequence": (
            int,
            Field(ge=1, description="Position in the source service's log; gaps allowed"),
        ),
        "aggregateversion": (
            int,
            Field(ge=1, description="The aggregate's version after this event: 1, 2, 3, …"),
        ),
        "actor": (str, Field(description="Who caused the change (the token's `sub`)")),
        "correlationid": (str, Field(description="The conversation the change belongs to")),
        "causationid": (str, Field(description="The request or event that caused this one")),
    }
    config = ConfigDict(
        extra="ignore",
        json_schema_extra={"deprecated": True} if spec.deprecated else None,
    )
    model: type[BaseModel] = create_model(
        _model_name(spec), __doc__=spec.summary, __config__=config, **fields
    )
    return model


def _model_name(spec: EventType) -> str:
    # One name per type and version (`MeetingAmendedV2Message`), a valid identifier, so that
    # every document calls a message schema by the same name.
    return f"{spec.model.__name__.removesuffix(f'V{spec.version}')}V{spec.version}Message"

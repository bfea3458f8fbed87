"""Composition root of the goals service."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import AliasChoices, Field

from services.goals.application import GoalsApplication
from services.goals.http import routers
from services.goals.policies import CarryOver
from shared.consumer import Consumer, ProcessInbox
from shared.contract import SUBSCRIPTIONS
from shared.service import Runtime, create_service
from shared.settings import ServiceSettings

CARRY_OVER_CONSUMER, CARRY_OVER_SUBJECTS = SUBSCRIPTIONS["goals"]


class GoalsSettings(ServiceSettings):
    service = "goals"
    port: int = Field(
        default=8001, ge=0, le=65535, validation_alias=AliasChoices("OKR_GOALS_PORT", "port")
    )
    database_schema: str = Field(
        default="goals",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        validation_alias=AliasChoices("OKR_GOALS_DATABASE_SCHEMA", "database_schema"),
    )


def _wire(runtime: Runtime) -> None:
    """The quarter shift: a durable consumer of the reviews events."""
    settings = runtime.settings
    app = runtime.app
    assert isinstance(app, GoalsApplication)
    inbox = ProcessInbox(app, CARRY_OVER_CONSUMER, CarryOver(app))
    runtime.consumers.append(
        Consumer.for_service(
            settings, CARRY_OVER_CONSUMER, runtime.link, inbox, CARRY_OVER_SUBJECTS
        )
    )


def create_app(settings: GoalsSettings | None = None) -> FastAPI:
    return create_service(
        settings or GoalsSettings(),
        GoalsApplication,
        routers,
        title="OKR goals service",
        description="Cycles, objectives and key results. Every change is an event on "
        "`okr.goals.>`. Finalised reviews (`okr.reviews.>`) carry objectives into the next "
        "cycle.",
        on_runtime=_wire,
    )

"""Composition root of the check-in service."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import AliasChoices, Field

from services.checkins.application import CheckinsApplication
from services.checkins.http import lean_commands, routers
from shared.catalogue import Catalogue
from shared.consumer import Consumer, Inbox
from shared.contract import SUBSCRIPTIONS
from shared.service import Runtime, create_service
from shared.settings import ServiceSettings
from shared.sql import Database

CATALOGUE_CONSUMER, CATALOGUE_SUBJECTS = SUBSCRIPTIONS["checkins"]


class CheckinsSettings(ServiceSettings):
    service = "checkins"
    port: int = Field(
        default=8002, ge=0, le=65535, validation_alias=AliasChoices("OKR_CHECKINS_PORT", "port")
    )
    database_schema: str = Field(
        default="checkins",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        validation_alias=AliasChoices("OKR_CHECKINS_DATABASE_SCHEMA", "database_schema"),
    )


def _wire(runtime: Runtime) -> None:
    """The catalogue of key results: a durable consumer of the goals events."""
    settings = runtime.settings
    catalogue = Catalogue()
    consumer = Consumer.for_service(
        settings,
        CATALOGUE_CONSUMER,
        runtime.link,
        Inbox(Database(runtime.app), CATALOGUE_CONSUMER, catalogue),
        CATALOGUE_SUBJECTS,
    )
    catalogue.is_current = lambda: consumer.current
    runtime.consumers.append(consumer)
    runtime.parts["catalogue"] = catalogue


def create_app(settings: CheckinsSettings | None = None) -> FastAPI:
    return create_service(
        settings or CheckinsSettings(),
        CheckinsApplication,
        routers,
        title="OKR check-in service",
        description="Weekly check-ins on key results, their corrections, and teams' check-in "
        "meetings. Every change is an event on `okr.checkins.>`; the key results it accepts "
        "check-ins for come from the goals service's events.",
        on_runtime=_wire,
        lean=lean_commands,
    )

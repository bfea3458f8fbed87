"""Composition root of the projections service."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import AliasChoices, Field

from services.projections.http import routers
from services.projections.views import Views
from shared.consumer import Consumer, Inbox
from shared.service import Runtime, create_service
from shared.settings import ServiceSettings
from shared.sql import Database
from shared.store import ServiceApplication

VIEWS_CONSUMER = "views"


class ProjectionsApplication(ServiceApplication):
    """No aggregates: the store holds the views and the consumer's inbox."""

    name = "projections"


class ProjectionsSettings(ServiceSettings):
    service = "projections"
    port: int = Field(
        default=8004, ge=0, le=65535, validation_alias=AliasChoices("OKR_PROJECTIONS_PORT", "port")
    )
    database_schema: str = Field(
        default="projections",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        validation_alias=AliasChoices("OKR_PROJECTIONS_DATABASE_SCHEMA", "database_schema"),
    )
    overdue_cadence_days: int = Field(
        default=7, ge=1, le=365, description="A key result without a check-in for longer is overdue"
    )


def _wire(runtime: Runtime) -> None:
    """Every event of every service, through one durable consumer, into the views."""
    db = Database(runtime.app)
    consumer = Consumer.for_service(
        runtime.settings,
        VIEWS_CONSUMER,
        runtime.link,
        Inbox(db, VIEWS_CONSUMER, Views()),
        ["okr.>"],
    )
    runtime.consumers.append(consumer)
    runtime.parts["db"] = db


def create_app(settings: ProjectionsSettings | None = None) -> FastAPI:
    return create_service(
        settings or ProjectionsSettings(),
        ProjectionsApplication,
        routers,
        title="OKR projections",
        description="The OKR tree of a cycle, now or at any past moment (`as_of`); the audit "
        "trail of every change; check-in histories, overdue check-ins, team meetings and "
        "reviews. Read-only: every view is built from the events on `okr.>`.",
        on_runtime=_wire,
    )

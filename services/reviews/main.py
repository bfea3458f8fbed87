"""Composition root of the review service."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import AliasChoices, Field

from services.reviews.application import ReviewsApplication
from services.reviews.http import routers
from services.reviews.progress import ProgressView
from shared.catalogue import Catalogue
from shared.consumer import Consumer, Inbox, Projectors
from shared.contract import SUBSCRIPTIONS
from shared.service import Runtime, create_service
from shared.settings import ServiceSettings
from shared.sql import Database

READ_MODEL_CONSUMER, READ_MODEL_SUBJECTS = SUBSCRIPTIONS["reviews"]


class ReviewsSettings(ServiceSettings):
    service = "reviews"
    port: int = Field(
        default=8003, ge=0, le=65535, validation_alias=AliasChoices("OKR_REVIEWS_PORT", "port")
    )
    database_schema: str = Field(
        default="reviews",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        validation_alias=AliasChoices("OKR_REVIEWS_DATABASE_SCHEMA", "database_schema"),
    )
    # A partial batch of goals and check-in events waits this long for more before it is
    # applied: under a steady stream of check-ins one commit then serves many, which halves
    # the consumer's CPU per event. A request waiting with `min_position` ends the wait: the
    # batch is applied at once. 0 applies each batch as soon as it arrives.
    consumer_linger_s: float = Field(
        default=0.02,
        ge=0,
        le=1,
        validation_alias=AliasChoices("OKR_REVIEWS_CONSUMER_LINGER_S", "consumer_linger_s"),
    )


def _wire(runtime: Runtime) -> None:
    """What a review needs to know: the goals catalogue and the latest check-ins, from one
    durable consumer of the goals and checkins events."""
    settings = runtime.settings
    assert isinstance(settings, ReviewsSettings)
    catalogue = Catalogue()
    progress = ProgressView()
    consumer = Consumer.for_service(
        settings,
        READ_MODEL_CONSUMER,
        runtime.link,
        Inbox(Database(runtime.app), READ_MODEL_CONSUMER, Projectors(catalogue, progress)),
        READ_MODEL_SUBJECTS,
        linger=settings.consumer_linger_s,
    )
    catalogue.is_current = lambda: consumer.current
    runtime.consumers.append(consumer)
    runtime.parts["catalogue"] = catalogue
    runtime.parts["progress"] = progress


def create_app(settings: ReviewsSettings | None = None) -> FastAPI:
    return create_service(
        settings or ReviewsSettings(),
        ReviewsApplication,
        routers,
        title="OKR review service",
        description="A team's review of a cycle: scores beside suggestions, reflections, and a "
        "carry-over decision per objective. Every change is an event on `okr.reviews.>`; a "
        "finalised review carries objectives into the next cycle in the goals service.",
        on_runtime=_wire,
    )

"""The command headers are read straight from the request, not declared as FastAPI `Header`
parameters; the OpenAPI document must still describe them on every command, once."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from services.checkins.main import CheckinsSettings
from services.checkins.main import create_app as create_checkins
from services.goals.main import GoalsSettings
from services.goals.main import create_app as create_goals
from services.reviews.main import ReviewsSettings
from services.reviews.main import create_app as create_reviews

SECRET = "s" * 32
COMMAND_HEADERS = ["x-correlation-id", "x-request-id", "idempotency-key", "if-match"]


def _apps() -> dict[str, FastAPI]:
    return {
        "goals": create_goals(GoalsSettings(jwt_secret=SECRET)),
        "checkins": create_checkins(CheckinsSettings(jwt_secret=SECRET)),
        "reviews": create_reviews(ReviewsSettings(jwt_secret=SECRET)),
    }


def _headers(doc: dict[str, Any], method: str, path: str) -> list[str]:
    operation = doc["paths"][path][method]
    return [p["name"] for p in operation.get("parameters", []) if p["in"] == "header"]


@pytest.mark.parametrize(
    ("service", "method", "path", "expected"),
    [
        ("checkins", "post", "/v1/key-results/{key_result_id}/check-ins", COMMAND_HEADERS),
        ("checkins", "patch", "/v1/check-in-meetings/{meeting_id}", COMMAND_HEADERS),
        ("goals", "post", "/v1/cycles", COMMAND_HEADERS[:3]),  # creates: nothing to match
        ("goals", "patch", "/v1/objectives/{objective_id}", COMMAND_HEADERS),
        ("reviews", "put", "/v1/reviews/{review_id}/scores/{key_result_id}", COMMAND_HEADERS),
        ("checkins", "get", "/v1/key-results/{key_result_id}/check-ins", []),
        ("goals", "get", "/v1/cycles/{cycle_id}", []),
    ],
)
def test_commands_document_the_headers_they_read(
    service: str, method: str, path: str, expected: list[str]
) -> None:
    doc = _apps()[service].openapi()
    assert _headers(doc, method, path) == expected


def test_header_parameters_are_described_as_optional_strings() -> None:
    doc = _apps()["checkins"].openapi()
    operation = doc["paths"]["/v1/key-results/{key_result_id}/check-ins"]["post"]
    by_name = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    key = by_name["idempotency-key"]
    assert key["required"] is False
    assert key["schema"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert "records nothing twice" in key["description"]
    assert "412" in by_name["if-match"]["description"]
    # Path and query parameters are still FastAPI's own, listed first.
    assert [p["in"] for p in operation["parameters"]][:2] == ["path", "query"]


def test_building_apps_again_does_not_repeat_the_headers() -> None:
    _apps()
    doc = _apps()["checkins"].openapi()
    assert _headers(doc, "post", "/v1/key-results/{key_result_id}/check-ins") == COMMAND_HEADERS

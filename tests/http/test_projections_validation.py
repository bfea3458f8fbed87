"""Bad reads of the projections: every one a 4xx problem; no read without a valid token.

Nothing here writes, so the cases share one running projections service per store (a module
fixture) instead of starting NATS and the services for every case."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.http.helpers import anonymous, assert_problem
from tests.support import RunningService, token
from tests.system import STORES, running, store_for

CYCLE = "8b0c1f55-8e0e-4c43-9f0e-3c1f7e2b9a11"
READS = [
    f"/v1/cycles/{CYCLE}/okrs",
    "/v1/audit",
    "/v1/audit.csv",
    f"/v1/key-results/{CYCLE}/check-ins",
    f"/v1/cycles/{CYCLE}/overdue-check-ins",
    "/v1/teams/platform/check-in-meetings",
    f"/v1/reviews/{CYCLE}",
    "/v1/search?q=wins",
]

BAD = [
    (f"/v1/cycles/{CYCLE}/okrs", {"as_of": "yesterday"}, 422),
    (f"/v1/cycles/{CYCLE}/okrs", {"as_of": "2027-01-01T00:00:00"}, 422),  # no time zone
    ("/v1/cycles/not-a-uuid/okrs", {}, 422),
    ("/v1/audit", {"limit": 0}, 422),
    ("/v1/audit", {"limit": 501}, 422),
    ("/v1/audit", {"cursor": "x" * 65}, 422),
    ("/v1/audit", {"cursor": "bm90LWEtY3Vyc29y"}, 422),
    ("/v1/audit", {"since": "last week"}, 422),
    ("/v1/audit", {"actor": ""}, 422),
    ("/v1/audit", {"actor": "a" * 201}, 422),
    ("/v1/audit", {"min_position": "goals"}, 422),
    ("/v1/audit", {"min_position": ["goals:1"] * 9}, 422),
    ("/v1/audit", {"min_position": "elsewhere:1"}, 422),
    ("/v1/audit.csv", {"until": "soon"}, 422),
    (f"/v1/cycles/{CYCLE}/overdue-check-ins", {"cadence_days": 0}, 422),
    (f"/v1/cycles/{CYCLE}/overdue-check-ins", {"cadence_days": 366}, 422),
    ("/v1/teams/platform/check-in-meetings", {"cycle_id": "nope"}, 422),
    ("/v1/search", {}, 422),
    ("/v1/search", {"q": "a"}, 422),
    ("/v1/search", {"q": "a" * 201}, 422),
    ("/v1/search", {"q": "win", "limit": 201}, 422),
    (f"/v1/cycles/{CYCLE}/okrs", {}, 404),
    (f"/v1/key-results/{CYCLE}/check-ins", {}, 404),
    (f"/v1/cycles/{CYCLE}/overdue-check-ins", {}, 404),
    (f"/v1/reviews/{CYCLE}", {}, 404),
]


@pytest.fixture(scope="module", params=STORES)
async def projections(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningService]:
    base = tmp_path_factory.mktemp("projections-validation")
    async with running(store_for(request, base), base, "projections") as s:
        yield s["projections"]


@pytest.mark.parametrize(("path", "params", "status"), BAD)
async def test_bad_reads_are_problems(
    projections: RunningService, path: str, params: dict[str, object], status: int
) -> None:
    assert_problem(await projections.client.get(path, params=params), status)


@pytest.mark.parametrize("path", READS)
async def test_no_read_without_a_valid_token(projections: RunningService, path: str) -> None:
    async with anonymous(projections) as client:
        for headers in (
            {},
            {"Authorization": "Bearer nonsense"},
            {"Authorization": f"Bearer {token(ttl_s=-100)}"},
            {"Authorization": f"Bearer {token()}x"},
        ):
            r = await client.get(path, headers=headers)
            assert_problem(r, 401)
            assert r.headers["www-authenticate"].startswith("Bearer")

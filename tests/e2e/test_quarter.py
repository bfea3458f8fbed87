"""A whole quarter through HTTP only, on the system as `make run` starts it: plan, several
weeks of check-ins, a target adjustment, a review with scores and reflections, and the carry-
over — then the next cycle holds the carried objective, starting where the last one ended."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from shared.contract.events import LATEST
from tests.e2e.launcher import launched
from tests.support import read_stream

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract" / "schemas"

pytestmark = pytest.mark.e2e


def test_a_whole_quarter(tmp_path: Path) -> None:
    with launched(tmp_path) as system:
        headers = {"Authorization": f"Bearer {system.token}"}
        goals = httpx.Client(base_url=system.url("goals"), headers=headers, timeout=30)
        checkins = httpx.Client(base_url=system.url("checkins"), headers=headers, timeout=30)
        reviews = httpx.Client(base_url=system.url("reviews"), headers=headers, timeout=30)

        def ok(r: httpx.Response, status: int = 200) -> dict[str, Any]:
            assert r.status_code == status, r.text
            body: dict[str, Any] = r.json()
            return body

        # Plan the quarter, and schedule the next one.
        q1 = ok(
            goals.post(
                "/v1/cycles",
                json={"name": "2027 Q1", "starts_on": "2027-01-01", "ends_on": "2027-03-31"},
            ),
            201,
        )["id"]
        ok(goals.post(f"/v1/cycles/{q1}/start"))
        q2 = ok(
            goals.post(
                "/v1/cycles",
                json={"name": "2027 Q2", "starts_on": "2027-04-01", "ends_on": "2027-06-30"},
            ),
            201,
        )["id"]
        objective = ok(
            goals.post(
                "/v1/objectives",
                json={
                    "cycle_id": q1,
                    "title": "Customers love onboarding",
                    "owner": "ann",
                    "team": "growth",
                },
            ),
            201,
        )["id"]
        activation = ok(
            goals.post(
                f"/v1/objectives/{objective}/key-results",
                json={
                    "title": "Activated accounts",
                    "kind": "number",
                    "unit": "accounts",
                    "start": 0,
                    "target": 100,
                    "weight": 2,
                    "owner": "ann",
                },
            ),
            201,
        )
        guide = ok(
            goals.post(
                f"/v1/objectives/{objective}/key-results",
                json={
                    "title": "Guide published",
                    "kind": "boolean",
                    "start": 0,
                    "target": 1,
                    "owner": "bo",
                },
            ),
            201,
        )

        # Weekly check-ins; the first waits until the check-in service knows the key result.
        after = {"min_position": guide["position"]}
        for week, value in enumerate([10, 25, 40, 55], start=1):
            ok(
                checkins.post(
                    f"/v1/key-results/{activation['id']}/check-ins",
                    params=after,
                    json={"value": value, "confidence": 5 + week % 3, "note": f"week {week}"},
                ),
                201,
            )
        ok(
            checkins.post(
                f"/v1/key-results/{guide['id']}/check-ins",
                json={"value": 0, "confidence": 4, "blockers": ["legal review"]},
            ),
            201,
        )

        # Adjust as we learn: the target was too ambitious.
        adjusted = ok(
            goals.post(
                f"/v1/key-results/{activation['id']}/target",
                json={"target": 80, "reason": "sales cycle longer than planned"},
            )
        )

        # The review: suggestions from the latest progress, our scores, reflections.
        last_check_in = ok(
            checkins.post(
                f"/v1/key-results/{activation['id']}/check-ins", json={"value": 60, "confidence": 7}
            ),
            201,
        )
        # Both positions: the review needs the target adjustment and the last check-in.
        after_both = {"min_position": [adjusted["position"], last_check_in["position"]]}
        review = ok(
            reviews.post("/v1/reviews", params=after_both, json={"cycle_id": q1, "team": "growth"}),
            201,
        )["id"]
        body = ok(reviews.get(f"/v1/reviews/{review}"))
        suggested = {k["key_result_id"]: k for k in body["key_results"]}
        assert suggested[activation["id"]]["last_value"] == 60
        assert suggested[activation["id"]]["suggested_score"] == 0.8  # 60 of 0→80 is 0.75
        assert suggested[guide["id"]]["suggested_score"] == 0.0
        ok(
            reviews.put(
                f"/v1/reviews/{review}/scores/{activation['id']}",
                json={"score": 0.7, "comment": "two deals slipped into April"},
            )
        )
        for kind, text in [
            ("went_well", "Pairing sales and support on every trial"),
            ("learned", "Enterprise trials need four weeks, not two"),
            ("do_differently", "Start legal review in week one"),
        ]:
            ok(reviews.post(f"/v1/reviews/{review}/reflections", json={"kind": kind, "text": text}))
        ok(
            reviews.post(
                f"/v1/reviews/{review}/carry-over",
                json={"objective_id": objective, "decision": "carry_over", "next_cycle_id": q2},
            )
        )
        ok(reviews.post(f"/v1/reviews/{review}/finalise"))
        final = ok(reviews.get(f"/v1/reviews/{review}"))
        assert final["status"] == "final"

        # The next cycle: the carried objective, with the lessons and the start values.
        carried_id = final["objectives"][0]["carried_objective_id"]
        deadline = time.monotonic() + 30
        while (r := goals.get(f"/v1/objectives/{carried_id}")).status_code == 404:
            assert time.monotonic() < deadline, "the carried objective never appeared"
            time.sleep(0.1)
        carried = ok(r)
        assert carried["cycle_id"] == q2
        assert carried["carried_from"] == objective and carried["review_id"] == review
        assert [lesson["kind"] for lesson in carried["lessons"]] == [
            "went_well",
            "learned",
            "do_differently",
        ]
        key_results = {k["key_result_id"]: k["carried_key_result_id"] for k in final["key_results"]}
        carried_activation = ok(goals.get(f"/v1/key-results/{key_results[activation['id']]}"))
        assert (carried_activation["start"], carried_activation["target"]) == (60.0, 80.0)
        assert carried_activation["cycle_id"] == q2
        carried_guide = ok(goals.get(f"/v1/key-results/{key_results[guide['id']]}"))
        assert (carried_guide["start"], carried_guide["target"]) == (0.0, 1.0)

        # The projections tell the story: the adjustment with its reason, the tree as it was.
        projections = httpx.Client(base_url=system.url("projections"), headers=headers, timeout=30)
        trail = ok(
            projections.get(
                "/v1/audit",
                params={
                    "entity": activation["id"],
                    "event_type": "okr.goals.key_result.target_adjusted",
                    "min_position": adjusted["position"],
                },
            )
        )
        [entry] = trail["items"]
        assert entry["changes"] == {"target": {"from": 100.0, "to": 80.0}}
        assert entry["reason"] == "sales cycle longer than planned"
        before_adjustment = entry["at"]
        tree = ok(projections.get(f"/v1/cycles/{q1}/okrs", params={"as_of": before_adjustment}))
        [node] = tree["objectives"]
        was = {k["id"]: k for k in node["key_results"]}[activation["id"]]
        assert was["target"] == 80.0  # the moment of the adjustment itself
        earlier = ok(
            projections.get(
                "/v1/audit",
                params={
                    "entity": activation["id"],
                    "event_type": "okr.checkins.key_result_progress.checked_in",
                    "limit": 500,
                },
            )
        )["items"][-1]["at"]  # the first check-in
        tree = ok(projections.get(f"/v1/cycles/{q1}/okrs", params={"as_of": earlier}))
        was = {k["id"]: k for k in tree["objectives"][0]["key_results"]}[activation["id"]]
        assert (was["target"], was["current"]) == (100.0, 10.0)

        # Late check-ins on the closed quarter are refused.
        closed = ok(goals.post(f"/v1/cycles/{q1}/close", json={"reason": "quarter over"}))
        r = checkins.post(
            f"/v1/key-results/{activation['id']}/check-ins",
            params={"min_position": closed["position"]},
            json={"value": 61, "confidence": 7},
        )
        assert r.status_code == 409 and "closed" in r.json()["detail"], r.text

        # The rest of an OKR's life in the next quarter, so that every kind of event occurs.
        ok(goals.post(f"/v1/cycles/{q2}/start"))
        platform = ok(
            goals.post(
                "/v1/objectives",
                json={"cycle_id": q2, "title": "Faster pages", "owner": "cy", "team": "web"},
            ),
            201,
        )["id"]
        ok(
            goals.patch(
                f"/v1/objectives/{platform}",
                json={
                    "title": "Fast pages everywhere",
                    "description": "p95 under a second",
                    "owner": "di",
                    "team": "growth",
                    "parent_id": carried_id,
                    "reason": "growth owns the funnel",
                },
            )
        )
        latency = ok(
            goals.post(
                f"/v1/objectives/{platform}/key-results",
                json={
                    "title": "p95 ms",
                    "kind": "number",
                    "start": 2400,
                    "target": 900,
                    "owner": "di",
                },
            ),
            201,
        )
        ok(
            goals.patch(
                f"/v1/key-results/{latency['id']}",
                json={"title": "p95 page load (ms)", "owner": "ed", "weight": 3},
            )
        )
        check_in = ok(
            checkins.post(
                f"/v1/key-results/{latency['id']}/check-ins",
                params={"min_position": latency["position"]},
                json={"value": 2100, "confidence": 6},
            ),
            201,
        )
        ok(
            checkins.post(
                f"/v1/check-ins/{check_in['id']}/correct",
                json={"value": 2000, "reason": "read the wrong dashboard"},
            )
        )
        meeting = ok(
            checkins.post(
                "/v1/teams/growth/check-in-meetings",
                json={
                    "cycle_id": q2,
                    "held_on": date.today().isoformat(),
                    "wins": ["CDN in front of the API"],
                    "priorities": ["Images"],
                },
            ),
            201,
        )
        ok(
            checkins.patch(
                f"/v1/check-in-meetings/{meeting['id']}",
                json={"learnings": ["Measure before caching"], "reason": "added after"},
            )
        )
        ok(goals.post(f"/v1/key-results/{latency['id']}/remove", json={"reason": "replaced"}))
        last = ok(goals.post(f"/v1/objectives/{platform}/archive", json={"reason": "merged"}))

        # Every event of the scenario, read from NATS, matches its published JSON Schema.
        ok(projections.get("/v1/audit", params={"min_position": [last["position"]]}))
        messages = asyncio.run(read_stream(f"nats://127.0.0.1:{system.nats_port}", 1))
        seen = set()
        for message in messages:
            envelope = json.loads(message.data)
            schema = json.loads((CONTRACT / f"{envelope['type']}.json").read_text())
            jsonschema.validate(envelope, schema, format_checker=jsonschema.FormatChecker())
            declared = schema["$defs"][schema["properties"]["data"]["$ref"].rsplit("/", 1)[1]]
            assert set(envelope["data"]) <= set(declared.get("properties", {})), envelope
            seen.add(envelope["type"])
        assert len(messages) > 40
        assert seen == {spec.type for spec in LATEST.values()}, "a type no scenario step made"

"""The views are a function of the events: the same stream applied in order, or shuffled with
duplicates and redeliveries in batches of any size, gives identical views. Real services
produce the events; real stores (SQLite and PostgreSQL) hold the views."""

from __future__ import annotations

import json
import random
from typing import Any

from services.projections.main import ProjectionsApplication, ProjectionsSettings
from services.projections.views import HISTORY_KINDS, Views
from shared.consumer import Inbox, Outcome, Received, parse
from shared.sql import Database
from shared.store import store_env
from tests.http.checkins_helpers import check_in, plan
from tests.http.helpers import add_key_result, create_cycle, create_objective
from tests.http.reviews_helpers import synced
from tests.support import RunningService, read_stream


async def scenario(
    goals: RunningService, checkins: RunningService, reviews: RunningService
) -> tuple[str, str]:
    """A little of everything: plan, adjust, check in, correct, align, review, carry over."""
    p = await plan(goals, checkins, start=0, target=50)
    second = await add_key_result(goals.client, p.objective_id, title="Second", start=5, target=1)
    r = await goals.client.post(
        f"/v1/key-results/{p.key_result_id}/target", json={"target": 80, "reason": "stretch"}
    )
    assert r.status_code == 200
    await synced(reviews, goals, checkins)
    first = await check_in(checkins.client, p.key_result_id, value=10)
    await check_in(checkins.client, p.key_result_id, value=20, confidence=4)
    await check_in(checkins.client, second, value=3)
    r = await checkins.client.post(
        f"/v1/check-ins/{first}/correct", json={"value": 11, "reason": "recount"}
    )
    assert r.status_code == 200
    # An objective aligned under another after it was created: its row moves in the indexes.
    aligned = await create_objective(goals.client, p.cycle_id, title="Aligned later", team="growth")
    r = await goals.client.patch(f"/v1/objectives/{aligned}", json={"parent_id": p.objective_id})
    assert r.status_code == 200, r.text
    nxt = await create_cycle(goals.client, start=False, name="Next")
    await synced(reviews, goals, checkins)
    r = await reviews.client.post("/v1/reviews", json={"cycle_id": p.cycle_id, "team": "platform"})
    assert r.status_code == 201, r.text
    review = r.json()["id"]
    for url, body in [
        (f"/v1/reviews/{review}/scores/{second}", {"score": 0.3, "comment": "slow"}),
        (f"/v1/reviews/{review}/reflections", {"kind": "learned", "text": "Smaller bets"}),
        (
            f"/v1/reviews/{review}/carry-over",
            {"objective_id": p.objective_id, "decision": "carry_over", "next_cycle_id": nxt},
        ),
        (f"/v1/reviews/{review}/finalise", None),
    ]:
        r = await reviews.client.request("PUT" if "/scores/" in url else "POST", url, json=body)
        assert r.status_code == 200, r.text
    return aligned, p.objective_id


def dump(app: ProjectionsApplication) -> dict[str, Any]:
    """The views, without the positions that only number the order of application."""
    db = Database(app)
    with db.transaction(commit=False) as tx:
        entities = tx.execute("SELECT kind, id, cycle_id, parent_id, state FROM {t}view_entities")
        entity_rows = sorted(
            (r["kind"], r["id"], r["cycle_id"], r["parent_id"], r["state"])
            for r in entities.fetchall()
        )
        history: dict[tuple[str, str], list[tuple[str, str]]] = {}
        rows = tx.execute(
            "SELECT kind, id, valid_from, state FROM {t}view_history ORDER BY pos"
        ).fetchall()
        for r in rows:
            history.setdefault((r["kind"], r["id"]), []).append((r["valid_from"], r["state"]))
        audit = sorted(
            json.dumps({k: r[k] for k in r.keys() if k != "pos"}, sort_keys=True)
            for r in tx.execute("SELECT * FROM {t}view_audit").fetchall()
        )
    return {"entities": entity_rows, "history": history, "audit": audit}


def apply_all(
    app: ProjectionsApplication, events: list[Received], shuffle: bool, size: int = 0
) -> int:
    """Feed the events the way JetStream might: in order (in batches of `size`, or all in
    one), or shuffled, repeated and in batches of any size, redelivering whatever came too
    early. Returns the rounds taken."""
    inbox = Inbox(Database(app), "views", Views())
    inbox.setup()
    rng = random.Random(7)
    pending = list(events)
    rounds = 0
    while pending:
        rounds += 1
        assert rounds < 200, "the views never caught up"
        if shuffle:
            pending = pending + rng.sample(pending, k=min(len(pending), 5))  # duplicates
            rng.shuffle(pending)
        later: list[Received] = []
        while pending:
            n = rng.randint(1, 12) if shuffle else size or len(pending)
            batch, pending = pending[:n], pending[n:]
            outcomes, invalid = inbox.process(batch)
            assert not invalid, invalid
            later += [e for e, o in zip(batch, outcomes, strict=True) if o is Outcome.EARLY]
        pending = later
    return rounds


async def test_the_same_stream_shuffled_and_redelivered_gives_identical_views(
    goals: RunningService,
    checkins: RunningService,
    reviews: RunningService,
    projections_settings: ProjectionsSettings,
) -> None:
    aligned, parent = await scenario(goals, checkins, reviews)
    messages = await read_stream(projections_settings.nats_url, 0)
    events = [parse(m.subject, m.data, (m.headers or {}).get("Nats-Msg-Id")) for m in messages]
    assert {e.service for e in events} == {"goals", "checkins", "reviews"}

    ordered = ProjectionsApplication(store_env(projections_settings))
    shuffled_settings = projections_settings.model_copy(
        update={
            "data_dir": projections_settings.data_dir / "shuffled",
            "database_schema": projections_settings.database_schema + "_b",
        }
    )
    shuffled = ProjectionsApplication(store_env(shuffled_settings))
    # One event a batch: every change meets a state committed before it (the live case).
    one_by_one_settings = projections_settings.model_copy(
        update={
            "data_dir": projections_settings.data_dir / "one-by-one",
            "database_schema": projections_settings.database_schema + "_c",
        }
    )
    one_by_one = ProjectionsApplication(store_env(one_by_one_settings))
    try:
        assert apply_all(ordered, events, shuffle=False) == 1
        rounds = apply_all(shuffled, events, shuffle=True)
        assert rounds > 1  # some events did arrive before their predecessors
        assert apply_all(one_by_one, events, shuffle=False, size=1) == 1
        a, b, c = dump(ordered), dump(shuffled), dump(one_by_one)
        assert a["entities"] == b["entities"] == c["entities"]
        assert a["history"] == b["history"] == c["history"]
        assert a["audit"] == b["audit"] == c["audit"]
        assert len(a["audit"]) == len(events)
        # The objective aligned after its creation sits under its parent in the store.
        assert ("objective", aligned, parent) in {(row[0], row[1], row[3]) for row in c["entities"]}
        # The past is kept for the kinds the tree shows, which is all `as_of` reads; check-ins
        # and reviews exist only as they are now.
        assert {kind for kind, _ in a["history"]} == set(HISTORY_KINDS)
        assert {"check_in", "review"} <= {row[0] for row in a["entities"]}
        # And once more, everything again: nothing changes.
        apply_all(shuffled, events, shuffle=True)
        assert dump(shuffled) == b
    finally:
        ordered.close()
        shuffled.close()
        one_by_one.close()

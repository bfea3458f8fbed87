"""Both kinds of inbox keep what their consumer still lacks of a source in the store, beside the
positions: an event before the one it follows opens a hole, the events in it close it (applied,
or rejected and named by their headers), and a process started afresh knows the same."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from services.goals.application import GoalsApplication
from services.goals.main import GoalsSettings
from shared.consumer import Inbox, ProcessInbox, Received, parse
from shared.holes import Hole
from shared.sql import Database
from shared.store import store_env
from tests.integration.consumers import SOURCE, FailsOnce, goals_events
from tests.support import SECRET


class Ignores:
    """A policy that causes nothing: each event only leaves its inbox record."""

    def react(self, event: Received) -> list[Any]:
        return []


def _events() -> dict[int, Received]:
    bodies = goals_events(6)
    previous = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5}
    return {
        b["sequence"]: parse(
            "okr.goals.cycle.scheduled",
            json.dumps(b).encode(),
            f"{SOURCE}:{b['sequence']}",
            str(previous[b["sequence"]]),
        )
        for b in bodies
    }


InboxMaker = Callable[[GoalsApplication], Inbox | ProcessInbox]


def _process_inbox(app: GoalsApplication) -> Inbox | ProcessInbox:
    return ProcessInbox(app, "holes", Ignores())


def _inbox(app: GoalsApplication) -> Inbox | ProcessInbox:
    db = Database(app)
    return Inbox(db, "holes", FailsOnce(db.postgres, fail_from=10**9))


@pytest.mark.parametrize("make", [_process_inbox, _inbox], ids=["process-inbox", "inbox"])
def test_what_a_consumer_lacks_is_kept_in_the_store(
    store: dict[str, Any], make: InboxMaker
) -> None:
    settings = GoalsSettings(jwt_secret=SECRET, **store)
    events = _events()

    def fresh() -> tuple[GoalsApplication, Inbox | ProcessInbox]:
        app = GoalsApplication(store_env(settings))
        inbox = make(app)
        inbox.setup()
        return app, inbox

    app, inbox = fresh()
    inbox.process([events[1], events[2], events[5]])
    assert inbox.positions == {SOURCE: 5}
    [hole] = inbox.holes[SOURCE]
    assert (hole.after, hole.through) == (2, 4)  # 3 and 4 are still to come
    app.close()

    app, inbox = fresh()  # a process started afresh
    assert inbox.holes == {SOURCE: [hole]}
    inbox.process([events[4]])  # 4 says nothing lies between 3 and it
    assert inbox.holes == {SOURCE: [Hole(2, 3, hole.opened)]}
    # 3 was rejected before the inbox; its headers named it, and it is settled all the same.
    inbox.process([events[6]], [(SOURCE, 3, 2)])
    assert inbox.holes == {}
    assert inbox.positions == {SOURCE: 6}
    app.close()

    app, inbox = fresh()
    assert inbox.holes == {}
    assert inbox.positions == {SOURCE: 6}
    app.close()


def test_a_policys_inbox_saves_an_applied_events_holes_with_its_effect(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = GoalsSettings(jwt_secret=SECRET, **store)
    events = _events()
    app = GoalsApplication(store_env(settings))
    inbox = ProcessInbox(app, "holes", Ignores())
    inbox.setup()

    def crash(*args: Any) -> None:
        raise RuntimeError("the process died after the events' saves")

    monkeypatch.setattr(inbox, "_settle", crash)
    with pytest.raises(RuntimeError):
        inbox.process([events[1], events[5]])
    app.close()

    app = GoalsApplication(store_env(settings))
    inbox = ProcessInbox(app, "holes", Ignores())
    inbox.setup()
    assert inbox.positions == {SOURCE: 5}
    [hole] = inbox.holes[SOURCE]
    assert (hole.after, hole.through) == (1, 4)
    app.close()

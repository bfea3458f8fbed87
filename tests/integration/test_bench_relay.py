"""The relay benchmark runs the relay several times over one store: between rounds it
forgets the relay's position, and only that, on both stores."""

from __future__ import annotations

from eventsourcing.persistence import Tracking

from bench.pipeline import forget_relay_position
from services.checkins.application import CheckinsApplication
from shared.store import RELAY_TRACKING_NAME, store_env


def test_a_round_forgets_the_relays_position_and_nothing_else(checkins_settings):
    app = CheckinsApplication(store_env(checkins_settings))
    try:
        recorder = app.recorder
        recorder.insert_tracking(Tracking(application_name=RELAY_TRACKING_NAME, notification_id=7))
        recorder.insert_tracking(Tracking(application_name="another-reader", notification_id=5))
        forget_relay_position(app)
        assert recorder.max_tracking_id(RELAY_TRACKING_NAME) is None
        assert recorder.max_tracking_id("another-reader") == 5
        # Recorded again from the start, as the next round's relay records it.
        recorder.insert_tracking(Tracking(application_name=RELAY_TRACKING_NAME, notification_id=3))
        assert recorder.max_tracking_id(RELAY_TRACKING_NAME) == 3
    finally:
        app.close()

"""Fields read from text on every event, by hand for speed: a stream message's delivery count,
stream and consumer sequences and pending count from its `$JS.ACK` reply subject (against
nats-py's own reading), and the views' fixed UTC time text (against `isoformat`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from nats.aio.msg import Msg

from services.projections.views import utc
from shared.pull import delivery

V1 = "$JS.ACK.OKR.projections-views.3.1042.998.1765000000123456789.17"
V2 = "$JS.ACK.hub.ACCHASH.OKR.projections-views.2.1042.998.1765000000123456789.0.abc"
V2_SHORT = "$JS.ACK.hub.ACCHASH.OKR.projections-views.5.1042.998.1765000000123456789.40"


@pytest.mark.parametrize("reply", [V1, V2, V2_SHORT])
def test_delivery_reads_what_nats_py_reads(reply: str) -> None:
    meta = Msg.Metadata._from_reply(reply)
    assert delivery(reply) == (
        meta.num_delivered,
        meta.sequence.stream,
        meta.sequence.consumer,
        meta.num_pending,
    )


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "_INBOX.abc.def",
        "$JS.ACK.OKR.c.1.2.3",  # too short
        "$JS.ACK.hub.ACC.OKR.c.1.2.3.4",  # ten tokens: neither form
        "$JS.ACK.OKR.c.x.2.3.4.5",  # not a count
        "$JS.ACK.OKR.c.1.x.3.4.5",
        "$JS.ACK.OKR.c.1.2.x.4.5",
        "$JS.ACK.OKR.c.1.2.3.4.-5",
        "$JS.NAK.OKR.c.1.2.3.4.5",
        "$XX.ACK.OKR.c.1.2.3.4.5",
    ],
)
def test_delivery_refuses_what_is_not_a_stream_reply(reply: str | None) -> None:
    assert delivery(reply) is None


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 12, 6, 5, 45, 58, 730151, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds
        datetime(5, 6, 7, 8, 9, 10, 11, tzinfo=UTC),  # a year of one digit
        datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
    ],
)
def test_utc_is_isoformat_in_utc_with_microseconds_and_z(at: datetime) -> None:
    expected = at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    assert utc(at) == expected

from tests.support import bodies, read_stream


async def test_cycle_event_reaches_nats(goals, nats_server):
    r = await goals.client.post(
        "/v1/cycles", json={"name": "Q1", "starts_on": "2027-01-01", "ends_on": "2027-03-31"}
    )
    assert r.status_code == 201, r.text
    msgs = await read_stream(nats_server.url, 1)
    assert [b["type"] for b in bodies(msgs)] == ["okr.goals.cycle.scheduled.v1"]

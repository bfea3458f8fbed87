from tests.support import bodies, read_stream


async def test_cycle_event_reaches_nats(goals, nats_server):
    r = await goals.client.post(
        "/v1/cycles", json={"name": "Q1", "starts_on": "2027-01-01", "ends_on": "2027-03-31"}
    )
    assert r.status_code == 201, r.text
    msgs = await read_stream(nats_server.url, 1)
    assert [b["type"] for b in bodies(msgs)] == ["okr.goals.cycle.scheduled.v1"]


async def test_metrics_count_requests_commands_and_relay(goals, nats_server):
    r = await goals.client.post(
        "/v1/cycles", json={"name": "Q1", "starts_on": "2027-01-01", "ends_on": "2027-03-31"}
    )
    assert r.status_code == 201
    await read_stream(nats_server.url, 1)
    text = (await goals.client.get("/metrics")).text
    assert 'okr_http_requests_total{route="POST /v1/cycles",service="goals",status="201"}' in text
    assert 'okr_commands_total{outcome="ok",service="goals"}' in text
    assert "okr_relay_published_total" in text
    assert "okr_writer_batch_size_bucket" in text

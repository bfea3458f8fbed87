"""Prometheus metrics shared by every service (one process, one service, one registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "okr_http_requests_total", "HTTP requests by route and status", ["service", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "okr_http_request_duration_seconds",
    "HTTP request latency by route",
    ["service", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
COMMANDS = Counter(
    "okr_commands_total", "Commands by outcome (ok, replayed, or the error)", ["service", "outcome"]
)
FORBIDDEN = Counter(
    "okr_commands_forbidden_total",
    "Commands refused because the actor lacks a permission (HTTP 403)",
    ["service", "permission"],
)
WRITER_BATCH = Histogram(
    "okr_writer_batch_size",
    "Commands saved per transaction by the writer",
    ["service"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
RELAY_PUBLISHED = Counter(
    "okr_relay_published_total", "Events published to JetStream by the relay", ["service"]
)
RELAY_DUPLICATES = Counter(
    "okr_relay_duplicates_total",
    "Publishes JetStream recognised as duplicates (republished after a crash or outage)",
    ["service"],
)
RELAY_FAILURES = Counter(
    "okr_relay_failures_total", "Relay rounds that failed and will be retried", ["service"]
)
RELAY_POSITION = Gauge(
    "okr_relay_position", "Last notification id the relay recorded as published", ["service"]
)
RELAY_BACKLOG = Gauge(
    "okr_relay_backlog", "Stored events not yet published (by notification id)", ["service"]
)
RELAY_PUBLISH_LATENCY = Histogram(
    "okr_relay_batch_seconds",
    "Time to publish one relay batch and get every ack",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENTS_STORED = Counter(
    "okr_events_stored_total",
    "Domain events committed to the service's store by commands",
    ["service"],
)
STORE_LATENCY = Histogram(
    "okr_store_save_seconds",
    "Time to save one writer batch",
    ["service"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
CONSUMER_APPLIED = Counter(
    "okr_consumer_applied_total", "Events a consumer applied", ["service", "consumer"]
)
CONSUMER_DUPLICATES = Counter(
    "okr_consumer_duplicates_total",
    "Events a consumer had already applied (redeliveries, republishes, replays)",
    ["service", "consumer"],
)
CONSUMER_REDELIVERED = Counter(
    "okr_consumer_redelivered_total",
    "Messages JetStream delivered more than once",
    ["service", "consumer"],
)
CONSUMER_RESCHEDULED = Counter(
    "okr_consumer_rescheduled_total",
    "Events that arrived before their predecessor and were handed back to come again",
    ["service", "consumer"],
)
CONSUMER_REJECTED = Counter(
    "okr_consumer_rejected_total",
    "Messages terminated as invalid (bad envelope, or data the consumer cannot use)",
    ["service", "consumer"],
)
CONSUMER_FAILURES = Counter(
    "okr_consumer_failures_total",
    "Consumer rounds that failed (NATS or store unreachable) and will be retried",
    ["service", "consumer"],
)
CONSUMER_LAG = Gauge(
    "okr_consumer_lag",
    "Messages in the stream not yet delivered to the consumer",
    ["service", "consumer"],
)
CONSUMER_LAG_EVENTS = Gauge(
    "okr_consumer_lag_events",
    "Per source: how far the newest event in the stream is ahead of what was applied",
    ["service", "consumer", "source"],
)
CONSUMER_LAG_SECONDS = Gauge(
    "okr_consumer_lag_seconds",
    "While messages wait: how old the newest applied event of a source is (0 when caught up)",
    ["service", "consumer", "source"],
)
CONSUMER_POSITION = Gauge(
    "okr_consumer_position",
    "Highest sequence settled (applied, or a duplicate or rejected one past it), per source",
    ["service", "consumer", "source"],
)
CONSUMER_HOLES_EXPIRED = Counter(
    "okr_consumer_holes_expired_total",
    "Holes given up: sequences of a source that never came within the wait (lost events)",
    ["service", "consumer"],
)
CONSUMER_HOLES = Gauge(
    "okr_consumer_missing_sequences",
    "Sequences of a source the consumer is past and still lacks (at most; the log has gaps)",
    ["service", "consumer", "source"],
)
CONSUMER_BATCH_SECONDS = Histogram(
    "okr_consumer_batch_seconds",
    "Time to apply and acknowledge one fetched batch",
    ["service", "consumer"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
POLICY_REFUSED = Counter(
    "okr_policy_refused_total",
    "Events a policy handled without effect because the rules refused what they asked",
    ["consumer"],
)
CHECKINS = Counter(
    "okr_checkins_total",
    "Check-ins recorded (committed; idempotent replays not counted), by the status their "
    "confidence gives: on_track (7-10), at_risk (4-6), off_track (0-3)",
    ["status"],
)
KEY_RESULTS = Gauge(
    "okr_key_results",
    "Live key results of started cycles by their latest confidence: on_track (7-10), at_risk "
    "(4-6), off_track (0-3), no_check_in; counted from the views every few seconds",
    ["status"],
)

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
STORE_LATENCY = Histogram(
    "okr_store_save_seconds",
    "Time to save one writer batch",
    ["service"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)

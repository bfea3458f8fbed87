"""Monitoring, checked without Docker: the Prometheus configuration and alert rules, Grafana's
provisioning and dashboard, and the monitoring services of docker-compose.yml — and every
metric the dashboard and the alerts use, looked for in the real /metrics of the four services
after a small scenario (cycle, objectives, key results, check-ins, a review).

`promtool`, when it is on the PATH, also checks the configuration, the rules, every dashboard
query and how some alerts behave; without it the checks are structural only. The series of the
exporters (NATS, blackbox) cannot be produced here: they are listed as external, and only their
names are checked against the exporters' forms."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import services.projections.main as projections_main
from tests.http.checkins_helpers import caught_up, plan
from tests.http.helpers import (
    add_key_result,
    archive_objective,
    create_cycle,
    create_objective,
    remove_key_result,
)
from tests.http.reviews_helpers import open_review, synced
from tests.support import RunningService

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
BLACKBOX = ROOT / "deploy" / "prometheus" / "blackbox.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "okr.yml"
DASHBOARD = GRAFANA / "dashboards" / "okr.json"
# The runbook: docs/operations.md.
RUNBOOKS = [ROOT / "docs" / "operations.md"]

SERVICES = {"goals": 8001, "checkins": 8002, "reviews": 8003, "projections": 8004}
MONITORING = {
    "prometheus": "prom/prometheus",
    "grafana": "grafana/grafana",
    "nats-exporter": "natsio/prometheus-nats-exporter",
    "blackbox": "prom/blackbox-exporter",
}
SEVERITIES = {"critical", "warning"}
REQUIRED_ALERTS = {
    "OkrServiceDown",
    "OkrServiceNotReady",
    "OkrRelayBacklogGrowing",
    "OkrRelayStuck",
    "OkrRelayPublishFailing",
    "OkrConsumerLagHigh",
    "OkrConsumerLagSecondsHigh",
    "OkrConsumerRejecting",
    "OkrConsumerReschedulingPersistently",
    "OkrConsumerMissingEvents",
    "OkrHttpErrorRateHigh",
    "OkrCommandLatencyHigh",
    "NatsDown",
    "NatsJetStreamUnavailable",
}

OKR_METRIC = re.compile(r"\bokr_[a-z_]+\b")
EXTERNAL_METRIC = re.compile(r"\b(?:gnatsd|jetstream|probe)_[a-z_]+\b")
# Series of the exporters, which only exist in the containers. prometheus-nats-exporter names
# them <gnatsd>_<endpoint>_<field> for the core endpoints and jetstream_<server|account|stream|
# consumer>_<field> for /jsz; the blackbox exporter's probe_* are fixed names.
EXTERNAL = {
    "gnatsd_healthz_status",
    "gnatsd_varz_connections",
    "jetstream_server_jetstream_disabled",
    "jetstream_server_total_streams",
    "jetstream_server_total_messages",
    "jetstream_consumer_num_pending",
    "probe_success",
}
EXPORTER_FORMS = [
    re.compile(r"gnatsd_(varz|connz|healthz|routez|subsz|leafz|gatewayz|accstatz)_[a-z][a-z0-9_]*"),
    re.compile(r"jetstream_(server|account|stream|consumer)_[a-z][a-z0-9_]*"),
    re.compile(r"probe_(success|duration_seconds|http_status_code|http_duration_seconds)"),
]
# Used series that a healthy scenario need not produce (nothing failed, was rejected or came
# twice); they must still be defined, so that their first failure shows up.
MAY_BE_SILENT = {
    "okr_relay_failures_total",
    "okr_relay_duplicates_total",
    "okr_consumer_failures_total",
    "okr_consumer_rejected_total",
    "okr_consumer_redelivered_total",
    "okr_consumer_rescheduled_total",
    "okr_commands_forbidden_total",
}
# Grafana's macros, replaced by something PromQL accepts to check the queries.
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "1d", "$service": ".*"}


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    data = _load_yaml(PROMETHEUS)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    data = _load_yaml(ALERTS)
    return [rule for group in data["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # inside collapsed rows
    return panels


def _dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]


def _used_metrics(dashboard: dict[str, Any], rules: list[dict[str, Any]]) -> set[str]:
    texts = _dashboard_queries(dashboard) + [r["expr"] for r in rules]
    texts += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return {name for text in texts for name in OKR_METRIC.findall(text)}


def _external_metrics(dashboard: dict[str, Any], rules: list[dict[str, Any]]) -> set[str]:
    texts = _dashboard_queries(dashboard) + [r["expr"] for r in rules]
    return {name for text in texts for name in EXTERNAL_METRIC.findall(text)}


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors() -> set[str]:
    anchors = set()
    for path in RUNBOOKS:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith("#"):
                    anchors.add(_slug(line.lstrip("#")))
            anchors.update(re.findall(r'<a (?:id|name)="([^"]+)"', path.read_text()))
    return anchors


def _promtool(*args: str, cwd: Path | None = None) -> None:
    # On the PATH, or unpacked from Debian's package by `make promtool` (CI does).
    local = Path(__file__).resolve().parents[2] / ".tools" / "prometheus" / "usr" / "bin"
    binary = shutil.which("promtool") or shutil.which("promtool", path=str(local))
    if binary is None:
        if os.environ.get("OKR_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is required (OKR_REQUIRE_PROMTOOL): run `make promtool`")
        pytest.skip("promtool is not on the PATH: structural checks only (make promtool)")
    result = subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Prometheus ---------------------------------------------------------------------------


def test_prometheus_scrapes_every_service_and_nats(
    prometheus: dict[str, Any], compose: dict[str, Any]
) -> None:
    services = compose["services"]
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert {"okr", "okr-readiness", "nats"} <= jobs.keys()

    okr_targets = [t for c in jobs["okr"]["static_configs"] for t in c["targets"]]
    assert sorted(okr_targets) == sorted(f"{name}:{port}" for name, port in SERVICES.items())
    for name, port in SERVICES.items():
        environment = services[name]["environment"]
        # The service listens on that port on every interface of the compose network.
        assert environment[f"OKR_{name.upper()}_PORT"] == str(port)
        assert environment["OKR_HOST"] == "0.0.0.0"
    assert jobs["okr"].get("metrics_path", "/metrics") == "/metrics"
    # The services label their series with `service`: a target label of that name would clash.
    for config in jobs["okr"]["static_configs"]:
        assert "service" not in (config.get("labels") or {})

    probes = {
        t: c["labels"]["service"]
        for c in jobs["okr-readiness"]["static_configs"]
        for t in c["targets"]
    }
    assert probes == {f"http://{name}:{port}/readyz": name for name, port in SERVICES.items()}
    readiness = jobs["okr-readiness"]
    assert readiness["metrics_path"] == "/probe"
    module = readiness["params"]["module"][0]
    assert module in _load_yaml(BLACKBOX)["modules"]
    exporter_address = [
        r for r in readiness["relabel_configs"] if r.get("target_label") == "__address__"
    ]
    assert exporter_address[0]["replacement"] == "blackbox:9115"

    nats_targets = [t for c in jobs["nats"]["static_configs"] for t in c["targets"]]
    assert nats_targets == ["nats-exporter:7777"]
    exporter = services["nats-exporter"]
    assert "http://nats:8222" in exporter["command"]
    assert {"-varz", "-healthz", "-jsz=all"} <= set(exporter["command"])
    # The NATS monitoring port the exporter reads is the one nats.conf opens.
    assert re.search(r"^http_port:\s*8222\s*$", (ROOT / "deploy/nats/nats.conf").read_text(), re.M)


def test_prometheus_loads_the_alert_rules_it_is_given(
    prometheus: dict[str, Any], compose: dict[str, Any]
) -> None:
    mounts = {
        v.split(":")[0]: v.split(":")[1] for v in compose["services"]["prometheus"]["volumes"]
    }
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    rules_at = mounts["./deploy/prometheus/alerts.yml"]
    assert any(Path(rules_at).match(pattern) for pattern in prometheus["rule_files"])
    command = compose["services"]["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command


def test_every_alert_has_severity_summary_description_and_a_runbook_section(
    rules: list[dict[str, Any]],
) -> None:
    anchors = _anchors()
    names = [rule.get("alert") for rule in rules]
    assert all(names), "only alerting rules belong in alerts.yml"
    assert len(names) == len(set(names)), "alert names must be unique"
    assert REQUIRED_ALERTS <= set(names), REQUIRED_ALERTS - set(names)
    for rule in rules:
        name = rule["alert"]
        assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        for key in ("summary", "description", "runbook"):
            assert isinstance(annotations.get(key), str) and annotations[key].strip(), (name, key)
        page, _, anchor = annotations["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor, (name, annotations["runbook"])
        assert anchor in anchors, f"{name}: no section #{anchor} in {[str(p) for p in RUNBOOKS]}"
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), (name, rule["for"])


def test_promtool_accepts_the_configuration_and_the_rules() -> None:
    _promtool("check", "config", "--syntax-only", str(PROMETHEUS))
    _promtool("check", "rules", str(ALERTS))


def test_promtool_accepts_every_dashboard_query(dashboard: dict[str, Any], tmp_path: Path) -> None:
    recorded = []
    for i, expr in enumerate(_dashboard_queries(dashboard)):
        for macro, value in GRAFANA_MACROS.items():
            expr = expr.replace(macro, value)
        recorded.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    _promtool("check", "rules", str(path))


def _fires(expr: str) -> str:
    """The alert's expression, with every series it returns worth 1."""
    return f"({expr}) * 0 + 1"


def test_alerts_fire_on_what_they_describe(rules: list[dict[str, Any]], tmp_path: Path) -> None:
    """Each case: the series over time, and which label sets the alert's expression returns."""
    exprs = {rule["alert"]: rule["expr"] for rule in rules}
    goals = 'job="okr", instance="goals:8001", service="goals"'
    checkins = 'job="okr", instance="checkins:8002", service="checkins"'
    nats = 'job="nats", instance="nats-exporter:7777"'
    server = f'{nats}, server_id="http://nats:8222"'
    http = "okr_http_requests_total"
    correct = "POST /v1/check-ins/{check_in_id}/correct"
    cases: list[dict[str, Any]] = [
        {
            # goals stores events but its relay stopped publishing; checkins is fine.
            "alert": "OkrRelayStuck",
            "series": {
                f'okr_commands_total{{{goals}, outcome="ok"}}': "0+5x20",
                f"okr_relay_published_total{{{goals}}}": "0+5x10 50x10",
                f'okr_commands_total{{{checkins}, outcome="ok"}}': "0+1x20",
                f"okr_relay_published_total{{{checkins}}}": "0+1x20",
            },
            "at": {"8m": [], "20m": ['{service="goals"}']},
        },
        {
            "alert": "OkrRelayBacklogGrowing",
            "series": {
                f"okr_relay_backlog{{{goals}}}": "0+10x20",
                f"okr_relay_backlog{{{checkins}}}": "0 5 0 5 0 5 0 5 0 5 0 5 0 5 0 5 0 5 0 5",
            },
            "at": {"15m": [f"{{{goals}}}"]},
        },
        {
            # The 503s of /readyz do not count; those of a command do.
            "alert": "OkrHttpErrorRateHigh",
            "series": {
                f'{http}{{{goals}, route="GET /readyz", status="503"}}': "0+6x10",
                f'{http}{{{goals}, route="POST /v1/cycles", status="201"}}': "0+10x10",
                f'{http}{{{checkins}, route="{correct}", status="503"}}': "0+3x10",
                f'{http}{{{checkins}, route="{correct}", status="200"}}': "0+3x10",
            },
            "at": {"10m": ['{service="checkins"}']},
        },
        {
            "alert": "OkrConsumerReschedulingPersistently",
            "series": {
                f'okr_consumer_rescheduled_total{{{goals}, consumer="catalogue"}}': "0+2x60",
                f'okr_consumer_rescheduled_total{{{checkins}, consumer="catalogue"}}': "0 1 2 2x57",
            },
            "at": {"50m": ['{service="goals", consumer="catalogue"}']},
        },
        {
            # One hole given up fires at once; the count not growing for 15 minutes clears it.
            "alert": "OkrConsumerMissingEvents",
            "series": {
                f'okr_consumer_holes_expired_total{{{checkins}, consumer="catalogue"}}': "0x5 1x40",
                f'okr_consumer_holes_expired_total{{{goals}, consumer="carry-over"}}': "0x45",
            },
            "at": {"10m": ['{service="checkins", consumer="catalogue"}'], "40m": []},
        },
        {
            # The exporter answers but NATS does not: its series are gone.
            "alert": "NatsDown",
            "series": {
                f"up{{{nats}}}": "1x20",
                f"gnatsd_varz_connections{{{server}}}": "5x2 _x18",
                f"gnatsd_healthz_status{{{server}}}": "0x2 _x18",
            },
            "at": {"1m": [], "15m": [f"{{{nats}}}"]},
        },
        {
            "alert": "NatsJetStreamUnavailable",
            "series": {
                f"up{{{nats}}}": "1x10",
                f"gnatsd_varz_connections{{{server}}}": "5x10",
                f"jetstream_server_jetstream_disabled{{{server}}}": "0x10",
                f"jetstream_server_total_streams{{{server}}}": "1x4 0x5",
            },
            "at": {"2m": [], "8m": ['{instance="nats-exporter:7777"}']},
        },
    ]
    tests = []
    for case in cases:
        tests.append(
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in case["series"].items()],
                "promql_expr_test": [
                    {
                        "expr": _fires(exprs[case["alert"]]),
                        "eval_time": at,
                        "exp_samples": [{"labels": labels, "value": 1} for labels in expected],
                    }
                    for at, expected in case["at"].items()
                ],
            }
        )
    path = tmp_path / "alerts.test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [], "tests": tests}, sort_keys=False))
    _promtool("test", "rules", str(path))


# --- Grafana ------------------------------------------------------------------------------


def test_grafana_provisions_the_datasource_and_the_dashboard(
    dashboard: dict[str, Any], compose: dict[str, Any]
) -> None:
    datasources = _load_yaml(DATASOURCES)["datasources"]
    assert len(datasources) == 1
    source = datasources[0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    # Every query of the dashboard goes to the provisioned data source.
    for panel in _panels(dashboard):
        for ref in [
            panel.get("datasource"),
            *[t.get("datasource") for t in panel.get("targets", [])],
        ]:
            if ref is not None and panel["type"] != "row":
                assert ref == {"type": "prometheus", "uid": source["uid"]}, panel["title"]

    provider = _load_yaml(PROVIDERS)["providers"][0]
    assert provider["type"] == "file"
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_the_dashboard_has_the_panels_operators_need(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    panels = [p for p in _panels(dashboard) if p["type"] != "row"]
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    queries = "\n".join(_dashboard_queries(dashboard))
    for needed in (
        "okr_commands_total",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "okr_http_requests_total",
        "okr_relay_published_total",
        "okr_relay_backlog",
        "okr_relay_batch_seconds_bucket",
        "okr_consumer_lag_events",
        "okr_consumer_lag_seconds",
        "okr_consumer_failures_total",
        "okr_consumer_rejected_total",
        "okr_consumer_redelivered_total",
        "okr_checkins_total",
        'okr_key_results{status="at_risk"}',
        "okr_commands_forbidden_total",
    ):
        assert needed in queries, needed


def test_exporter_series_are_of_the_exporters_form(
    dashboard: dict[str, Any], rules: list[dict[str, Any]]
) -> None:
    used = _external_metrics(dashboard, rules)
    assert used <= EXTERNAL, f"list new exporter series in EXTERNAL: {sorted(used - EXTERNAL)}"
    for name in EXTERNAL:
        assert any(form.fullmatch(name) for form in EXPORTER_FORMS), name


# --- docker-compose.yml -------------------------------------------------------------------


def test_monitoring_services_are_pinned_healthy_restarted_and_on_loopback(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, repository in MONITORING.items():
        service = services[name]
        image, _, tag = service["image"].partition(":")
        assert image == repository, service["image"]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin a release tag, not {tag!r}"
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
        for port in service.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for volume in service.get("volumes") or []:
            if volume.startswith("./"):
                assert volume.endswith(":ro"), f"{name}: mount {volume} read-only"
    assert "127.0.0.1:9090:9090" in services["prometheus"]["ports"]
    assert "127.0.0.1:3000:3000" in services["grafana"]["ports"]
    assert {"prometheus-data", "grafana-data"} <= compose["volumes"].keys()
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?"), password


# --- the metrics, from the running services -----------------------------------------------


@pytest.fixture(autouse=True)
def count_key_results_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """The projections count key results by status every 0.2 s instead of every 15 s."""
    monkeypatch.setattr(projections_main, "KEY_RESULTS_EVERY_S", 0.2)


async def _metrics(*services: RunningService) -> dict[str, dict[str, Any]]:
    """Per service: the metric families of its /metrics, by name."""
    out = {}
    for svc in services:
        r = await svc.client.get("/metrics")
        assert r.status_code == 200, r.text
        out[svc.runtime.settings.service] = {
            f.name: f for f in text_string_to_metric_families(r.text)
        }
    return out


def _exposable(family: Any) -> set[str]:
    """The series names a family can have, with samples or not yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
    }.get(family.type, ("",))
    return {family.name + suffix for suffix in suffixes}


def _value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    total = 0.0
    for family in families.values():
        for sample in family.samples:
            if sample.name == sample_name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


async def _positions(*services: RunningService) -> list[str]:
    out = []
    for svc in services:
        n = await asyncio.to_thread(svc.runtime.app.recorder.max_notification_id)
        if n:
            out.append(f"{svc.runtime.settings.service}:{n}")
    return out


async def test_every_metric_the_dashboard_and_alerts_use_is_exposed(
    goals: RunningService,
    checkins: RunningService,
    reviews: RunningService,
    projections: RunningService,
    dashboard: dict[str, Any],
    rules: list[dict[str, Any]],
) -> None:
    # A started cycle: key results at risk, on track, without a check-in, removed, and one of
    # an archived objective; a scheduled cycle's key result. Only the first three count.
    p = await plan(goals, checkins)  # one key result
    on_track = await add_key_result(goals.client, p.objective_id, title="Ship the API")
    await add_key_result(goals.client, p.objective_id, title="Not checked in yet")
    removed = await add_key_result(goals.client, p.objective_id, title="Dropped")
    await remove_key_result(goals.client, removed)
    archived = await create_objective(goals.client, p.cycle_id, title="Archived")
    await add_key_result(goals.client, archived, title="Of an archived objective")
    await archive_objective(goals.client, archived)
    later = await create_cycle(
        goals.client, start=False, name="Q2 2027", starts_on="2027-04-01", ends_on="2027-06-30"
    )
    later_objective = await create_objective(goals.client, later, title="Later")
    await add_key_result(goals.client, later_objective, title="Of a scheduled cycle")
    await caught_up(checkins, goals)

    before = await _metrics(checkins)
    at_risk = {"value": 25, "confidence": 5, "note": "slipping", "blockers": ["hiring"]}
    path = f"/v1/key-results/{p.key_result_id}/check-ins"
    first = await checkins.client.post(path, json=at_risk, headers={"Idempotency-Key": "m-1"})
    assert first.status_code == 201, first.text
    again = await checkins.client.post(path, json=at_risk, headers={"Idempotency-Key": "m-1"})
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
    r = await checkins.client.post(
        f"/v1/key-results/{on_track}/check-ins",
        json={"value": 30, "confidence": 9, "note": "", "blockers": []},
    )
    assert r.status_code == 201, r.text
    after = await _metrics(checkins)
    for status, added in (("at_risk", 1), ("on_track", 1), ("off_track", 0)):
        counted = _value(after["checkins"], "okr_checkins_total", status=status) - _value(
            before["checkins"], "okr_checkins_total", status=status
        )
        assert counted == added, f"okr_checkins_total{{status={status!r}}} grew by {counted}"

    await synced(reviews, goals, checkins)
    r = await open_review(reviews, p.cycle_id)
    assert r.status_code == 201, r.text
    r = await projections.client.get(
        "/v1/audit", params={"min_position": await _positions(goals, checkins, reviews)}
    )
    assert r.status_code == 200, r.text
    for svc in (goals, checkins, reviews, projections):
        assert (await svc.client.get("/readyz")).status_code == 200
        assert (await svc.client.get("/healthz")).status_code == 200

    expected = {"on_track": 1, "at_risk": 1, "off_track": 0, "no_check_in": 1}
    deadline = time.monotonic() + 10
    while True:
        families = (await _metrics(projections))["projections"]
        counts = {s: _value(families, "okr_key_results", status=s) for s in expected}
        if counts == expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert counts == expected

    metrics = await _metrics(goals, checkins, reviews, projections)
    exposable = set()
    with_samples = set()
    for families in metrics.values():
        for family in families.values():
            exposable |= _exposable(family)
            with_samples |= {sample.name for sample in family.samples}

    used = _used_metrics(dashboard, rules)
    assert {"okr_checkins_total", "okr_key_results", "okr_relay_backlog"} <= used
    missing = used - exposable
    assert not missing, f"used by the dashboard or the alerts, exposed by no service: {missing}"
    silent = used - with_samples - MAY_BE_SILENT
    assert not silent, f"no series of these after the scenario: {sorted(silent)}"

    # The route filters of the queries match the routes the services really label.
    routes = {
        sample.labels["route"]
        for families in metrics.values()
        for sample in families["okr_http_requests"].samples
        if "route" in sample.labels
    }
    commands = re.compile(r"(POST|PUT|PATCH|DELETE) /v1/.*")
    assert "POST /v1/key-results/{key_result_id}/check-ins" in routes
    assert any(commands.fullmatch(route) for route in routes)
    assert not any(commands.fullmatch(route) for route in routes if route.startswith("GET "))
    operational = re.compile(r"GET /(healthz|readyz|metrics)")
    assert {"GET /metrics", "GET /readyz", "GET /healthz"} <= routes
    assert all(operational.fullmatch(r) for r in ("GET /metrics", "GET /readyz", "GET /healthz"))
    alert_text = ALERTS.read_text()
    assert 'route=~"(POST|PUT|PATCH|DELETE) /v1/.*"' in alert_text
    assert 'route!~"GET /(healthz|readyz|metrics)"' in alert_text

"""The deployment files, checked without Docker: docker-compose.yml against the Compose
Specification (the schema `check-jsonschema` ships, offline), required secrets without
defaults, and a Dockerfile whose final stage runs as a non-root user."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# Secrets the stack cannot run without: each use must be `${NAME:?message}`.
SERVICES = ("goals", "checkins", "reviews", "projections")
REQUIRED_SECRETS = {"OKR_JWT_SECRET", "POSTGRES_PASSWORD"} | {
    f"OKR_{name.upper()}_DB_PASSWORD" for name in SERVICES
}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|PRIVATE|CREDENTIAL|API_KEY", re.IGNORECASE)
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err}, ${NAME:+alt}, ...
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?")


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    data = yaml.safe_load(compose_text)
    assert isinstance(data, dict)
    return data


def _stages(dockerfile: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions grouped by stage, continuation lines joined."""
    logical: list[str] = []
    current = ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[list[tuple[str, str]]] = []
    for instruction in logical:
        keyword, _, rest = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest.strip()))
    return stages


def test_compose_file_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_secrets_are_required_and_never_defaulted(compose_text: str) -> None:
    uses: dict[str, list[str | None]] = {}
    for match in INTERPOLATION.finditer(compose_text):
        uses.setdefault(match["name"], []).append(match["op"])
    missing = REQUIRED_SECRETS - uses.keys()
    assert not missing, f"never used in docker-compose.yml: {sorted(missing)}"
    for name, ops in uses.items():
        if name in REQUIRED_SECRETS or SECRET_NAME.search(name):
            assert all(op == ":?" for op in ops), (
                f"${{{name}}} must always be written ${{{name}:?message}} (required, no "
                f"default), found operators {ops}"
            )


def test_secrets_are_not_written_as_literals(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        for key, value in environment.items():
            if SECRET_NAME.search(key):
                assert isinstance(value, str) and value.startswith("${") and ":?" in value, (
                    f"{name}.{key} must come from a required variable, not a literal"
                )


def test_each_service_connects_as_its_own_database_role(compose: dict[str, Any]) -> None:
    """deploy/postgres/init.sh makes a role per service that owns its schema only; the
    superuser's password reaches no service."""
    services = compose["services"]
    for name in SERVICES:
        environment = services[name]["environment"]
        url = environment["OKR_DATABASE_URL"]
        password = f"OKR_{name.upper()}_DB_PASSWORD"
        assert url.startswith(f"postgresql://okr_{name}:${{{password}:?"), url
        assert url.endswith("@postgres:5432/okr")
        assert "POSTGRES_PASSWORD" not in str(environment)
        # The database's init script sets the role's password from the same variable.
        assert services["postgres"]["environment"][password].startswith(f"${{{password}:?")
    init = services["postgres"]["volumes"][0]
    assert init.startswith("./deploy/postgres/init.sh:/docker-entrypoint-initdb.d/")
    assert init.split(":")[1].endswith(".sh")
    # Run, not sourced, by the image's entrypoint: it must stay executable.
    assert (ROOT / "deploy" / "postgres" / "init.sh").stat().st_mode & 0o111


def test_services_wait_for_what_they_need(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    assert services["stream-setup"]["command"] == ["python", "-m", "shared", "stream"]
    assert services["stream-setup"]["depends_on"]["nats"]["condition"] == "service_healthy"
    goals = services["goals"]["depends_on"]
    assert goals["stream-setup"]["condition"] == "service_completed_successfully"
    assert goals["nats"]["condition"] == "service_healthy"
    assert goals["postgres"]["condition"] == "service_healthy"
    # Only stream-setup declares the stream: no service runs the declaration besides it.
    declaring = [n for n, s in services.items() if "stream" in (s.get("command") or [])]
    assert declaring == ["stream-setup"]


def test_bind_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source and source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_dockerfile_final_stage_runs_as_non_root() -> None:
    stages = _stages(DOCKERFILE.read_text())
    assert len(stages) >= 2, "the Dockerfile should be multi-stage"
    final = stages[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":", 1)[0].strip()
    assert user not in {"root", "0"}, f"the final stage runs as {users[-1]}"
    keywords = [keyword for keyword, _ in final]
    # Nothing after the last USER switches back or runs as root.
    assert keywords.index("CMD") > max(i for i, k in enumerate(keywords) if k == "USER")
    assert "HEALTHCHECK" in keywords


def test_dockerfile_installs_the_project_from_pyproject() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim|^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert "COPY pyproject.toml" in text
    assert re.search(r"pip install (--no-deps )?\.", text)
    assert 'CMD ["python", "-m", "services.goals"]' in text

"""Settings from `OKR_` environment variables, with a `.env` file honoured.

One base class for what every service shares; each service adds its own port. Secrets have no
default: the JWT secret comes from `OKR_JWT_SECRET` or, in the embedded default, from the file
the launcher keeps in the data folder.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

JWT_SECRET_FILE = "jwt-secret"  # noqa: S105 - a file name, not a secret

DEFAULT_PORTS = {"goals": 8001, "checkins": 8002, "reviews": 8003, "projections": 8004}


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def is_origin(text: str) -> bool:
    """Whether `text` is exactly a web origin: http(s), a host, an optional port, nothing else."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and "*" not in parts.netloc
        and not (parts.username or parts.password or parts.path or parts.query or parts.fragment)
        and not text.endswith(("?", "#"))
    )


class Settings(BaseSettings):
    """What every process of the system reads."""

    model_config = SettingsConfigDict(
        env_prefix="OKR_", env_file=".env", extra="ignore", validate_default=True
    )

    nats_url: str = "nats://127.0.0.1:4222"
    # NATS credentials (deploy/nats/auth.conf): a user and password, or a credentials file
    # (JWT and nkey seed). Unset: no authentication, as the embedded default needs none.
    # `OKR_NATS_URL` may list several servers of a cluster, separated by commas.
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_creds: Path | None = None
    data_dir: Path = Path(".data")
    database_url: SecretStr | None = None
    jwt_secret: SecretStr | None = None
    # Tokens of the organisation's identity provider (RS256/ES256), verified by its JWKS.
    # Set all three to use them; then HS256 tokens of the shared secret are refused.
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    host: str = "127.0.0.1"
    # Browser origins (`scheme://host[:port]`, comma-separated) allowed to call the services
    # from another origin: the board, served by the projections, calls the check-in service.
    # Empty: no CORS headers at all, so browsers keep to the same-origin policy.
    cors_origins: str = ""

    # The JetStream stream every service publishes to (DESIGN §4).
    stream_name: str = "OKR"
    stream_subjects: str = "okr.>"
    stream_max_age_days: float = Field(default=0, ge=0, description="0 keeps events forever")
    stream_duplicate_window_s: float = Field(default=120, gt=0)
    stream_replicas: int = Field(default=1, ge=1, le=5)
    stream_storage: str = Field(default="file", pattern="^(file|memory)$")

    # Logs: JSON lines (one object per record) or plain text for a terminal.
    log_format: str = Field(default="json", pattern="^(json|text)$")
    log_level: str = Field(default="INFO", pattern="^(?i:debug|info|warning|error)$")

    # Bounds on what one request may carry.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)

    # How the relay and the writer batch their work.
    # Two pages are in flight at once; through a backlog each costs one read of the store and
    # one record of the position, and a crash republishes at most two pages.
    relay_batch_size: int = Field(default=2000, ge=1, le=10_000)
    relay_poll_interval_s: float = Field(default=0.5, gt=0)
    relay_publish_timeout_s: float = Field(default=5.0, gt=0)
    writer_max_batch: int = Field(default=256, ge=1)
    aggregate_cache_size: int = Field(default=10_000, ge=0)

    # How consumers fetch and acknowledge.
    consumer_batch_size: int = Field(default=256, ge=1, le=10_000)
    consumer_ack_wait_s: float = Field(default=30.0, gt=0)
    consumer_poll_interval_s: float = Field(default=1.0, gt=0)
    # A consumer's batches commit without waiting for the disk, and their messages are
    # acknowledged after one sync for all the batches of this long (0: after each).
    consumer_sync_every_s: float = Field(default=0.05, ge=0, le=5)

    # How long a statement waits for a free PostgreSQL connection. In an outage the library
    # tries each read ten times, so a request answers 503 after about ten times this.
    database_wait_s: int = Field(default=5, ge=1, le=60)

    # Bounded wait for read-your-writes (`min_position`).
    read_wait_timeout_s: float = Field(default=5.0, ge=0)

    # Token lifetime for locally minted tokens.
    token_ttl_s: int = Field(default=12 * 3600, gt=0)

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip() == "":
            return None
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("OKR_DATABASE_URL must be a postgresql:// URL")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: str) -> str:
        for origin in _comma_list(value):
            if not is_origin(origin):
                raise ValueError(
                    f"OKR_CORS_ORIGINS: {origin!r} is not an origin such as "
                    "https://okr.example.com (scheme, host and port only; no wildcard)"
                )
        return value

    @property
    def cors_origin_list(self) -> list[str]:
        return _comma_list(self.cors_origins)

    def jwt_secret_value(self) -> str:
        """The HS256 secret: from settings, else from the launcher's file in the data folder."""
        if self.jwt_secret is not None and self.jwt_secret.get_secret_value():
            return self.jwt_secret.get_secret_value()
        path = self.data_dir / JWT_SECRET_FILE
        if path.exists():
            value = path.read_text().strip()
            if value:
                return value
        raise RuntimeError(
            "No JWT secret: set OKR_JWT_SECRET, or start the system with `okr run`, "
            f"which keeps one in {path}"
        )

    def ensure_jwt_secret(self) -> str:
        """Used by the launcher: keep a random secret in the data folder when none is set."""
        try:
            return self.jwt_secret_value()
        except RuntimeError:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path = self.data_dir / JWT_SECRET_FILE
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
            return path.read_text().strip()


class ServiceSettings(Settings):
    """A service's settings: the shared ones plus its own name, port and schema.

    Each service subclasses this with `service` set and its port read from `OKR_<SERVICE>_PORT`.
    """

    model_config = SettingsConfigDict(
        env_prefix="OKR_",
        env_file=".env",
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
    )

    service: ClassVar[str] = ""
    port: int = Field(default=0, ge=0, le=65535)
    # PostgreSQL schema of the service's store; empty means the service name.
    database_schema: str = Field(default="", pattern=r"^([a-z_][a-z0-9_]{0,62})?$")

    def model_post_init(self, _context: object) -> None:
        if not self.port:
            self.port = DEFAULT_PORTS[self.service]
        if not self.database_schema:
            self.database_schema = self.service

    @property
    def source(self) -> str:
        """The CloudEvents `source` of this service's events."""
        return f"okr/{self.service}"

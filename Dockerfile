# syntax=docker/dockerfile:1
#
# One image for every OKR service. Pick the process by command:
#   python -m services.goals          (the default)
#   python -m services.<name>         any other service
#   python -m shared stream           declare the JetStream stream (one-shot)
#   python -m shared token <sub>      mint a bearer token (needs OKR_JWT_SECRET)
#   python -m shared run              the launcher (every service, plus nats-server if none)
#
# Build: docker build -t okr-services .

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtual environment with the pinned dependencies and the project -------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/okr
ENV PATH=/opt/okr/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml alone (with empty packages), so this layer is
# reused until the pins change.
COPY pyproject.toml README.md* ./
RUN mkdir -p shared services \
    && touch shared/__init__.py services/__init__.py \
    && pip install . \
    && pip uninstall -y okr-services \
    && rm -rf shared services build ./*.egg-info

# Then the project itself; its dependencies are already in place.
COPY shared ./shared
COPY services ./services
RUN pip install --no-deps . \
    && python -m compileall -q /opt/okr/lib \
    && cd / && python -c "import services.goals.main, services.checkins.main, services.reviews.main, services.projections.main, shared.cli"

# --- runtime: the virtual environment, a non-root user, nothing else -----------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="okr-services" \
      org.opencontainers.image.description="Event-sourced OKR services over NATS JetStream"

ENV PATH=/opt/okr/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OKR_HOST=0.0.0.0 \
    OKR_DATA_DIR=/var/lib/okr \
    OKR_HEALTHCHECK_PORT=8001

RUN groupadd --system --gid 10001 okr \
    && useradd --system --uid 10001 --gid okr --home-dir /var/lib/okr --shell /usr/sbin/nologin okr \
    && mkdir -p /var/lib/okr \
    && chown okr:okr /var/lib/okr

COPY --from=build /opt/okr /opt/okr

# No `.env` is copied into the image: settings come from the environment (OKR_*).
# OKR_DATA_DIR holds the SQLite stores when OKR_DATABASE_URL is unset: mount a volume there.
WORKDIR /var/lib/okr

# Numeric, so orchestrators can verify the user is not root.
USER 10001:10001

EXPOSE 8001 8002 8003 8004

# Liveness of the service in this container; set OKR_HEALTHCHECK_PORT for another service.
# (slim has no curl: Python's standard library does the request.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('OKR_HEALTHCHECK_PORT', '8001'), timeout=4)"]

STOPSIGNAL SIGTERM
CMD ["python", "-m", "services.goals"]

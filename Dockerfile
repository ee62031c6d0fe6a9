# syntax=docker/dockerfile:1
# One image, several entry points: each Kubernetes workload picks its own with `command`
# (see deploy/k8s/base). Build:  docker build -t dataserver:0.1.0 .
# The production image (the default, last stage) holds services/ only. The `dev` target adds
# the Dhan feed simulator (python -m simulator) for a development overlay:
#   docker build --target dev -t dataserver-dev:0.1.0 .
# Pin the base by digest in CI for reproducible builds:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:... .
ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv with the project and its pinned dependencies -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Runtime dependencies first (no dev extras), in their own layer so a code-only change
# does not reinstall them. The list comes from pyproject.toml; versions from constraints.txt.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt

# The project itself (generated gRPC code under services/gen is committed, so no protoc here).
# Only services/ is copied, so the simulator and terminal packages are not found and not
# installed; the terminal's console script would only fail there, so it goes too.
COPY services ./services
RUN pip install -c constraints.txt . \
 && pip check \
 && rm /opt/venv/bin/dataserver-terminal

# ---- build-dev: the same, plus the simulator and its extra (websockets) -----------------
FROM build AS build-dev
COPY simulator ./simulator
RUN pip install -c constraints.txt '.[simulator]' \
 && pip check

# ---- base: what both images share, without the virtualenv ------------------------------
FROM ${PYTHON_IMAGE} AS base
LABEL org.opencontainers.image.title="dataserver" \
      org.opencontainers.image.description="Market-data server: registry, subscription, feed, scheduler"

# HOME=/tmp: the root filesystem is read-only in Kubernetes; /tmp is an emptyDir there.
# DATASERVER_DATA_DIR: the default (a folder beside the source) would point into
# site-packages once installed; /app/var is the registry's master cache (an emptyDir in k8s).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    HOME=/tmp \
    DATASERVER_DATA_DIR=/app/var

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app \
 && mkdir -p /app/var \
 && chown 10001:10001 /app/var

WORKDIR /app
# Numeric so Kubernetes can verify runAsNonRoot without a passwd lookup.
USER 10001:10001

# registry, subscription, feed gateway, feed shard, scheduler; every process: metrics.
EXPOSE 50051 50052 50053 50054 50055 9464

# ---- dev: the services and the simulator (ws 8765, control http 8766) --------------------
FROM base AS dev
COPY --from=build-dev /opt/venv /opt/venv
# Listen beyond the container's loopback.
ENV SIM_HOST=0.0.0.0 \
    SIM_CONTROL_HOST=0.0.0.0
EXPOSE 8765 8766
CMD ["python", "-m", "simulator"]

# ---- runtime (default): the virtualenv only, no source tree, no build tools --------------
FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
# A default only; the manifests set the command of every workload.
CMD ["python", "-m", "services.registry"]

# agent-runtime: serve Python agents over gRPC (port 50051) with Prometheus metrics (port 9464).
#
#   docker build -t agent-runtime .
#
# BASE_IMAGE is any image with python3 (3.11) and its venv module: the public slim
# Python image by default, or a local one where registries are out of reach.
# Behind a TLS-intercepting proxy, hand pip the proxy's CA bundle as a BuildKit
# secret; it is used only when given and never stored in a layer:
#
#   DOCKER_BUILDKIT=1 docker build --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt -t agent-runtime .
#
# The container runs as a numeric non-root user, needs no writable path but /tmp,
# and stops gracefully on SIGTERM (the entrypoint is the server process itself).

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# The build backend only (pinned); it never reaches the final image.
ARG SETUPTOOLS_VERSION=84.2.1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/agent-runtime && python3 -m venv /opt/build
# Dependencies first, from the exact lock, so code changes reuse this layer.
COPY requirements.lock ./
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && /opt/agent-runtime/bin/pip install --no-deps --only-binary=:all: -r requirements.lock \
    && /opt/build/bin/pip install "setuptools==${SETUPTOOLS_VERSION}"
COPY pyproject.toml README.md ./
COPY service ./service
# The project itself (its dependencies are all in the lock), then no installer is left in the venv.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
    && /opt/agent-runtime/bin/pip install --no-deps --no-index /tmp/wheels/*.whl \
    && /opt/agent-runtime/bin/python -m pip uninstall --yes setuptools pip \
    && /opt/agent-runtime/bin/python -m compileall -q /opt/agent-runtime/lib

FROM ${BASE_IMAGE}
COPY --from=build /opt/agent-runtime /opt/agent-runtime
# /app is on the import path: put (or mount) agent modules there and serve them with --agent module:attr.
WORKDIR /app
ENV PATH=/opt/agent-runtime/bin:${PATH} \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    AGENT_RUNTIME_HOST=0.0.0.0 \
    AGENT_RUNTIME_PORT=50051
USER 10001:10001
EXPOSE 50051 9464
ENTRYPOINT ["/opt/agent-runtime/bin/agent-runtime", "serve"]

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="agent-runtime" \
      org.opencontainers.image.description="Serve Python AI agents over gRPC in Kubernetes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/agent-runtime/agent-runtime" \
      org.opencontainers.image.documentation="https://github.com/agent-runtime/agent-runtime#deploy-on-kubernetes"

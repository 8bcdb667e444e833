# tidings as an image: the wheel built from this checkout, installed with its extras into a
# virtualenv, run as an unprivileged user. Build from the repository root:
#
#   docker build -t tidings:0.1.0 .
#   docker run --rm -p 8000:8000 tidings:0.1.0                  # one node, SQLite in the container
#   docker run --rm tidings:0.1.0 --help                        # any other tidings command
#
# The three-node cluster with PostgreSQL, Redis and nginx: deploy/docker/compose.yaml.
# .ci/wheel-smoke runs the same build and install steps (without a container engine) in CI.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- the wheel
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
RUN python -m pip install --no-cache-dir --disable-pip-version-check build==1.6.1
# Only what the wheel is built from (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m build --wheel --outdir /dist

# ---- the runtime
FROM ${PYTHON_IMAGE}
# The backends' extras: postgres (asyncpg), redis, nats. Override with --build-arg EXTRAS=...
ARG EXTRAS=postgres,redis,nats
COPY --from=wheel /dist /dist
RUN python -m venv /opt/tidings \
    && /opt/tidings/bin/pip install --no-cache-dir --disable-pip-version-check \
       "$(ls /dist/tidings-*.whl)[${EXTRAS}]" \
    && groupadd --system --gid 10001 tidings \
    && useradd --system --uid 10001 --gid tidings --home-dir /var/lib/tidings --create-home \
       --shell /usr/sbin/nologin tidings

ENV PATH=/opt/tidings/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TIDINGS_HOST=0.0.0.0 \
    TIDINGS_PORT=8000

# Numeric, so that Kubernetes' runAsNonRoot can check it. The working directory is the only
# writable one: the default store (sqlite:///tidings.db) lands there; a cluster sets
# TIDINGS_STORE to PostgreSQL and writes nothing locally.
USER 10001:10001
WORKDIR /var/lib/tidings
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('TIDINGS_PORT', '8000'), timeout=2)"]

# SIGTERM (docker stop, Kubernetes) closes devices with 1012 and deregisters the node.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tidings"]
CMD ["serve"]

# syntax=docker/dockerfile:1
#
# Tanso's API (and, with another command, its job worker) in a container.
#
#   docker build -t tanso .
#   docker run -e TANSO_DATABASE__URL=postgresql://user:pw@db/tanso -e TANSO_ADMIN_KEY=... \
#              -p 8000:8000 tanso                                   # migrate, then serve
#   docker run -e TANSO_DATABASE__URL=... -e TANSO_ADMIN_KEY=... tanso worker --concurrency 8
#
# The container needs a PostgreSQL (15 or newer): TANSO_DATABASE__URL (or DATABASE_URL) is
# required, and so are TANSO_ADMIN_KEY and TANSO_CLAIMS__SIGNING_KEY (an Ed25519 private key,
# PEM: `openssl genpkey -algorithm ed25519`), which production refuses to start without. The embedded PostgreSQL that `tanso serve` starts when none is set is for
# development on a laptop, not for a container whose files vanish with it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: the dependencies, pinned by requirements/constraints.txt, in a venv ----------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
# Only what decides the dependencies, so this layer is rebuilt only when they change. Every
# dependency ships as a wheel (psycopg as psycopg[binary]), so no compiler is needed.
COPY pyproject.toml ./
COPY requirements/constraints.txt requirements/constraints.txt
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements/runtime.txt \
    && pip install -c requirements/constraints.txt -r requirements/runtime.txt

# ---- runtime: the venv and the source, run by an unprivileged user -----------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TANSO_ENVIRONMENT=production \
    TANSO_LOG_JSON=true

RUN groupadd --system --gid 10001 tanso \
    && useradd --system --uid 10001 --gid tanso --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin tanso

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# Run from the source tree (not an installed wheel): Alembic finds alembic.ini and
# migrations/ next to app/ (app/db/runtime.py).
COPY alembic.ini ./
COPY migrations ./migrations
COPY app ./app
# Compiled now, as root: the tanso user cannot write here.
RUN python -m compileall -q app migrations

USER tanso:tanso
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# `serve` and `worker` both bring the schema to head (Alembic) before they start; SIGTERM
# stops them gracefully (the worker finishes the jobs it is running first).
ENTRYPOINT ["/bin/sh", "-c", "if [ -z \"${TANSO_DATABASE__URL:-${DATABASE_URL:-${TANSO_DATABASE_URL:-}}}\" ]; then echo 'tanso: set TANSO_DATABASE__URL (or DATABASE_URL) to a PostgreSQL 15+ URL; the embedded database is for development only' >&2; exit 64; fi; exec python -m app.cli \"$@\"", "tanso"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

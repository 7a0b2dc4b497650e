# progress-relay container image.
#   make image                       (podman or docker build -t progress-relay:0.1.0 .)
#   docker run --rm -p 8765:8765 progress-relay:0.1.0        (dev settings)
# Configuration comes from RELAY_* environment variables (.env.example).
#
# BASE_IMAGE: any Debian-like image with Python 3.11+ as `python3` (and pip). The
# default is the registry's python:3.11-slim; CI builds on a local Debian bookworm
# base instead (scripts/image-base.sh), so nothing below may assume a path that only
# one of the two has: `python3` (never `python`), `python3 -m pip`, no /usr/local.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    RELAY_HOST=0.0.0.0 \
    RELAY_PORT=8765

# Unprivileged user; the numeric id lets Kubernetes check runAsNonRoot.
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin relay

# Install the project and its runtime dependencies from pyproject.toml (no
# test extras), then drop the sources: the installed package is what runs.
# The dependencies get a layer of their own, rebuilt only when pyproject.toml
# changes, so a code change rebuilds in seconds.
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" >/tmp/deps.txt \
 && python3 -m pip install -r /tmp/deps.txt && rm /tmp/deps.txt
# README.md* : the build still works while the README is absent. Whole packages,
# never single modules: the layout inside them is free to change.
COPY README.md* ./
COPY service/ service/
COPY auth/ auth/
RUN python3 -m pip install --no-deps . && rm -rf /src

# An empty working directory: no stray .env is read from it.
WORKDIR /app
USER 10001:10001

EXPOSE 8765
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RELAY_PORT', '8765'), timeout=2)"]

CMD ["progress-relay", "serve"]

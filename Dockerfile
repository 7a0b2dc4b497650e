# progress-relay container image.
#   docker build -t progress-relay:0.1.0 .
#   docker run --rm -p 8765:8765 progress-relay:0.1.0        (dev settings)
# Configuration comes from RELAY_* environment variables (.env.example).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RELAY_HOST=0.0.0.0 \
    RELAY_PORT=8765

# Unprivileged user; the numeric id lets Kubernetes check runAsNonRoot.
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin relay

# Install the project and its runtime dependencies from pyproject.toml (no
# test extras), then drop the sources: the installed package is what runs.
WORKDIR /src
# README.md* : the build still works while the README is absent.
COPY pyproject.toml README.md* ./
COPY service/ service/
COPY auth/ auth/
RUN pip install . && rm -rf /src

# An empty working directory: no stray .env is read from it.
WORKDIR /app
USER 10001:10001

EXPOSE 8765
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RELAY_PORT', '8765'), timeout=2)"]

CMD ["progress-relay", "serve"]

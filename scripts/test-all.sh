#!/usr/bin/env bash
# The whole test suite: Python (unit, integration, Redis, browser), the JavaScript client
# and the example mini-program's report page (clients/js: npm test).
# Installs what it needs: Redis, PostgreSQL and RabbitMQ (if not answering), Node packages,
# Debian's Chromium, and podman, runc and debootstrap for the container image.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

bash scripts/ensure-redis.sh
bash scripts/ensure-ingest-services.sh

# Node packages for the client's tests (the example mini-program's page tests too:
# miniprogram-simulate and jsdom), installed again when the lockfile changed.
if [ -f clients/js/package.json ]; then
  (cd clients/js && { [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error; })
fi

# Debian's Chromium for the browser tests, and CJK fonts so Chinese status texts render.
if { [ ! -x /usr/bin/chromium ] || [ ! -d /usr/share/fonts/opentype/noto ]; } \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium and fonts-noto-cjk for the browser tests" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null
fi

# The container image (tests/test_image.py): built from the Dockerfile with podman on a
# local Debian base, no Docker engine or registry (scripts/image-smoke.sh installs podman,
# runc and debootstrap when missing and caches the base under ~/.cache/progress-relay), then
# run with the rest of the suite. In CI a failed build makes those tests fail.
if [ "${CI:-}" = true ] || command -v podman >/dev/null 2>&1; then
  if image_env=$(bash scripts/image-smoke.sh --build-only); then
    while IFS='=' read -r key value; do export "$key=$value"; done <<<"$image_env"
  else
    echo "the container image was not built: tests/test_image.py will fail (CI) or skip" >&2
  fi
fi

status=0
"$PY" -m pytest "$@" || status=$?
if [ -f clients/js/package.json ]; then
  (cd clients/js && npm test) || status=$?
fi
exit $status

#!/usr/bin/env bash
# The whole test suite: Python (unit, integration, Redis, browser) and the JavaScript client.
# Installs what it needs: Redis (if not answering), Node packages, Debian's Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

bash scripts/ensure-redis.sh

if [ -f clients/js/package.json ]; then
  (cd clients/js && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; })
fi

if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

status=0
"$PY" -m pytest "$@" || status=$?
if [ -f clients/js/package.json ]; then
  (cd clients/js && npm test) || status=$?
fi
exit $status

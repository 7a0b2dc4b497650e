#!/usr/bin/env bash
# The static quality gates (`make check`; CI runs them before the tests):
#   ruff check          lint: pyflakes, pycodestyle, isort, pyupgrade, bugbear, McCabe <= 10,
#                       pydocstyle on the public API (rules and reasons in pyproject.toml)
#   ruff format --check one formatting, no diffs about spacing in review
#   mypy                --strict on service/ and auth/
#   clients/js          ESLint (eslint.config.js) and tsc on the declarations (index.d.ts
#                       against the implementation, test/types/usage.ts against index.d.ts)
# Every gate runs even when an earlier one fails, so one run lists every finding; the
# exit status is non-zero when any gate failed. Coverage is measured with the tests
# (see .ci/run): its floor is [tool.coverage.report] fail_under in pyproject.toml.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

failed=()
gate() {
  local name=$1
  shift
  echo "== $name"
  if "$@"; then
    echo "   ok"
  else
    failed+=("$name")
  fi
}

js_gates() (
  cd clients/js || exit 1
  # A fresh clone has no node_modules; an older checkout may lack the linter.
  if [ ! -x node_modules/.bin/eslint ] || [ ! -x node_modules/.bin/tsc ]; then
    npm ci --no-audit --no-fund --loglevel=error || exit 1
  fi
  npm run --silent lint && npm run --silent typecheck
)

# One line per finding; run the same commands without --output-format for context and fixes
# (ruff check --fix, ruff format).
gate "ruff check" "$VENV/bin/ruff" check --output-format concise .
gate "ruff format --check" "$VENV/bin/ruff" format --check --output-format concise .
gate "mypy --strict (service, auth)" "$VENV/bin/mypy"
gate "clients/js: eslint, tsc" js_gates

if [ ${#failed[@]} -gt 0 ]; then
  printf 'check: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "check: all gates passed"

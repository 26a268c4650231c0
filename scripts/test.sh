#!/usr/bin/env bash
# Install cxrdemo with its test extras into .venv and run the whole test suite (arguments go to pytest).
# Also installs Debian's chromium + chromedriver (for the real-browser test) when run as root with apt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e ".[test]"
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "note: could not install chromium; the browser test will be skipped"
  else
    echo "note: chromium/chromedriver not installed; the browser test will be skipped"
  fi
fi
export CXRDEMO_OFFLINE=${CXRDEMO_OFFLINE:-}
exec .venv/bin/python -m pytest --durations=15 "$@"  # --durations: the 15 slowest tests, so a slow one shows

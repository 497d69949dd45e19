#!/usr/bin/env bash
# Create .venv (once), install the requirements and the test tools, install Debian's Chromium for the
# browser test when it is missing (needs root or sudo), and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir -r requirements.txt -r requirements-dev.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "note: could not install chromium; the browser test will be skipped outside CI" >&2
fi
exec .venv/bin/python -m pytest -q "$@"

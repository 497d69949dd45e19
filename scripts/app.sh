#!/usr/bin/env bash
# Create .venv (once), install the pinned requirements and the project itself (editable; a no-op when they are
# there) and start the app.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir -r requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
exec .venv/bin/python -m streamlit run app.py "$@"

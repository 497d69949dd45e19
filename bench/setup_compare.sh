#!/usr/bin/env bash
# A separate benchmark environment: the compared libraries in bench/.compare-env, layered over .venv's torch
# (so torch is not installed twice). Not part of requirements.txt; the app and the tests never import them.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --target bench/.compare-env \
  -r bench/requirements-compare.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --target bench/.compare-env gitdb smmap

#!/usr/bin/env bash
# Set up skyguard with every extra in .venv, then lint, type-check and run the tests.
#   bash devops/test.sh          everything, the e2e tier on a local Slurm cluster included
#   SKYGUARD_E2E=0 bash devops/test.sh   skip the e2e tier (it needs root and apt)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,launch,wandb,torch,gpu,forensics,fastlogs]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest -m "not e2e"
if [ "${SKYGUARD_E2E:-1}" != 0 ]; then
  # Real SkyPilot on a local Slurm cluster it sets up itself: one node, and two in network
  # namespaces for the multi-node tests (root, apt; 15-25 min).
  SKYGUARD_E2E=1 .venv/bin/python -m pytest -m e2e tests/e2e
fi

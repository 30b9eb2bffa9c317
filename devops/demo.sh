#!/usr/bin/env bash
# Set up skyguard in .venv and watch it catch a hung training job.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
export PATH="$PWD/.venv/bin:$PATH"
state=$(mktemp -d)
trap 'rm -rf "$state"' EXIT

echo "\$ skyguard run --heartbeat-timeout 5 -- python examples/train.py --hang-after 3"
set +e
skyguard run --state-dir "$state" --heartbeat-timeout 5 --grace 5 -- \
  python examples/train.py --hang-after 3
code=$?
set -e
echo
echo "exit code: $code (75 = retryable: SkyPilot's job_recovery restarts the job)"
echo "record ($state/termination.json):"
python -c 'import json,sys; r=json.load(open(sys.argv[1])); r.pop("history"); print(json.dumps(r, indent=2))' \
  "$state/termination.json"
if [ "$code" -ne 75 ]; then
  echo "demo: expected exit code 75" >&2
  exit 1
fi

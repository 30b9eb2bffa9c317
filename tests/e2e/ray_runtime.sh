#!/usr/bin/env bash
# The Python that tests/e2e/test_ray_path.py runs SkyPilot's Ray path with: a venv
# like the runtime SkyPilot installs on a Ray-path node (skypilot[remote] and
# ray[default] at SkyPilot's SKY_REMOTE_RAY_VERSION, click<8.3.0, setuptools<70:
# sky/skylet/constants.py, RAY_INSTALLATION_COMMANDS), apart from the project's
# venv and the e2e client venv: Ray is no dependency of skyguard.
#
# Idempotent: a venv whose stamp matches the versions is kept (a second run takes
# a second). Prints one line, RAY_PYTHON=<its python>; on failure one
# "ray_runtime.sh: ERROR: ..." line and a non-zero exit.
#
# Knobs (environment): SKYGUARD_E2E_HOME (default ~/.cache/skyguard-e2e), the
# venv is $SKYGUARD_E2E_HOME/ray-venv.
set -euo pipefail

E2E_HOME=${SKYGUARD_E2E_HOME:-$HOME/.cache/skyguard-e2e}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RAYV=$E2E_HOME/ray-venv
RAY_VERSION=2.9.3
die() { echo "ray_runtime.sh: ERROR: $*" >&2; exit 1; }

# The SkyPilot the project pins for its launch extra, so the program is that version's.
SKY_REQ=$(grep -o '"skypilot==[^"]*"' "$REPO/pyproject.toml" | tr -d '"') \
  || die "no skypilot==VERSION in $REPO/pyproject.toml"
WANT="$SKY_REQ ray==$RAY_VERSION"
mkdir -p "$E2E_HOME"
# One install at a time (two test runs at once share the venv).
exec 9>"$E2E_HOME/ray-venv.lock"
flock 9
if [ "$(cat "$RAYV/.skyguard-stamp" 2>/dev/null)" != "$WANT" ] \
  || ! (cd / && "$RAYV/bin/python" -c 'import ray, sky.skylet.job_lib' 2>/dev/null); then
  rm -rf "$RAYV"
  python3 -m venv "$RAYV" || die "python3 -m venv $RAYV failed"
  # --no-compile: Ray ships thousands of modules; the test imports a few.
  "$RAYV/bin/pip" install -q --no-compile "skypilot[remote]==${SKY_REQ#skypilot==}" "ray[default]==$RAY_VERSION" \
    "click<8.3.0" "setuptools<70" </dev/null >"$E2E_HOME/ray-pip.log" 2>&1 \
    || die "pip install $WANT failed: $(grep -v '^WARNING' "$E2E_HOME/ray-pip.log" | tail -3 | tr '\n' ' ')"
  (cd / && "$RAYV/bin/python" -c 'import ray, sky.skylet.job_lib') \
    || die "ray or skypilot does not import in $RAYV"
  echo "$WANT" >"$RAYV/.skyguard-stamp"
fi
echo "RAY_PYTHON=$RAYV/bin/python"

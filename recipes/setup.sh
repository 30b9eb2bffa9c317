#!/usr/bin/env bash
# Install skyguard on a node (recipes/job.yaml and recipes/sandbox.yaml call it in
# their `setup:`). What it installs:
#   - SKYGUARD_WHEEL set (skyguard launch): that wheel, the client's own skyguard, which
#     launch ships by file_mounts into the directory of this script;
#   - otherwise the workdir SkyPilot synced, which must be a clone of skyguard
#     (`sky launch recipes/job.yaml` from a clone).
#
# Target: the active Python environment (SkyPilot activates its user venv for
# setup and run, so `python train.py` can import skyguard's heartbeat API), or
# $HOME/.skyguard/venv when none is active. Uses uv when SkyPilot installed it,
# pip otherwise; nothing is fetched but packages from the package index.
#
# Idempotent and fast on re-run: a recovery (or `sky exec`) with the same source
# skips the install. Knob: SKYGUARD_EXTRAS="wandb,gpu" installs those extras.
# Any failing step prints one "skyguard setup: ERROR: ..." line and exits 1, except an
# install that failed for a transient reason (package index unreachable, a timeout, a
# 5xx): that exits 75, the code recipes/job.yaml lists in recover_on_exit_codes, so
# SkyPilot retries the job instead of failing it. SkyPilot 0.14.1 records setup's exit
# code (and so applies recover_on_exit_codes to it) on its Ray path (clouds, Kubernetes);
# its Slurm path does not record it, so there the job fails either way.
set -euo pipefail

EXIT_RETRY=75
# What pip and uv print when the failure is the request's own: final, whatever else failed.
FINAL_PATTERNS=('ResolutionImpossible' 'Invalid requirement' 'No solution found' 'conflicting dependencies')
# What pip and uv print when the failure is the network's (pip prints its retries only
# while it has retries left: its default is 5).
TRANSIENT_PATTERNS=(
  'NewConnectionError' 'ConnectTimeoutError' 'ReadTimeoutError' 'Read timed out'
  'Connection refused' 'Connection reset' 'ConnectionResetError' 'RemoteDisconnected'
  'Temporary failure in name resolution' 'Name or service not known' 'Max retries exceeded'
  'ProxyError' 'IncompleteRead' 'HTTP error 5[0-9][0-9]' 'too many 5[0-9][0-9] error responses'
  'Failed to fetch' 'error sending request' 'dns error' 'operation timed out'
)

fail() {
  echo "skyguard setup: ERROR: $*" >&2
  exit 1
}
say() { echo "skyguard setup: $*"; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
wheel=""
if [ -n "${SKYGUARD_WHEEL:-}" ]; then
  [[ $SKYGUARD_WHEEL =~ ^skyguard-[A-Za-z0-9_.+]+-py3-none-any\.whl$ ]] \
    || fail "SKYGUARD_WHEEL='$SKYGUARD_WHEEL': expected a skyguard wheel's file name"
  wheel=$here/$SKYGUARD_WHEEL
  [ -f "$wheel" ] || fail "no $wheel: skyguard launch ships it by file_mounts (was it changed?)"
else
  src=$(cd "$here/.." && pwd)
  [ -f "$src/pyproject.toml" ] || fail "no pyproject.toml in $src: no skyguard to install (launch with 'skyguard launch', which ships its own, or from a clone of skyguard)"
fi

if [ -n "${VIRTUAL_ENV:-}" ]; then
  env_dir=$VIRTUAL_ENV
elif [ -n "${CONDA_PREFIX:-}" ]; then
  env_dir=$CONDA_PREFIX
else
  env_dir=$HOME/.skyguard/venv
fi
python=$env_dir/bin/python

extras=${SKYGUARD_EXTRAS:-}
if [ -n "$extras" ] && ! [[ $extras =~ ^[a-z0-9_-]+(,[a-z0-9_-]+)*$ ]]; then
  fail "SKYGUARD_EXTRAS='$extras': use comma-separated extra names, e.g. wandb,gpu"
fi
target=${wheel:-$src}
[ -n "$extras" ] && target="$target[$extras]"

# What is installed is identified by what it came from (the wheel's bytes, or the
# source files), plus the extras.
if [ -n "$wheel" ]; then
  digest=$({ echo "extras=$extras"; sha256sum <"$wheel"; } | sha256sum | cut -d' ' -f1) \
    || fail "cannot hash $wheel"
else
  packages=()
  for path in devops notifications; do
    [ -d "$src/$path" ] && packages+=("$path")
  done
  digest=$(
    cd "$src"
    {
      echo "extras=$extras"
      find pyproject.toml "${packages[@]}" -type f \( -name '*.py' -o -name pyproject.toml \) \
        | LC_ALL=C sort | xargs sha256sum
    } | sha256sum | cut -d' ' -f1
  ) || fail "cannot hash the source in $src"
fi
stamp=$env_dir/.skyguard-installed

# Every node of a Slurm cluster runs setup at once in one shared home (and env): one
# install at a time (a node's import check ran into another's half-done install, and
# the job ended FAILED_SETUP); the next one finds the stamp and skips.
mkdir -p "$(dirname "$env_dir")" || fail "cannot create $(dirname "$env_dir")"
exec 9>"$env_dir.skyguard-setup.lock" || fail "cannot open $env_dir.skyguard-setup.lock"
if command -v flock >/dev/null; then
  flock 9 || fail "cannot lock $env_dir.skyguard-setup.lock"
fi

# Checked from / so the workdir's own devops/ does not shadow the installed one.
installed() { (cd / && "$python" -c 'import devops.skypilot.node.runner' >/dev/null 2>&1) && [ -x "$env_dir/bin/skyguard" ]; }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] && installed; then
  say "skyguard already installed in $env_dir"
  exit 0
fi

if [ ! -x "$python" ]; then
  command -v python3 >/dev/null || fail "python3 not found; skyguard needs Python >= 3.10"
  say "creating $env_dir"
  python3 -m venv --system-site-packages "$env_dir" || fail "python3 -m venv $env_dir failed"
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || fail "$python is $("$python" -V 2>&1); skyguard needs Python >= 3.10"

uv=""
if [ -x "$HOME/.local/bin/uv" ]; then
  uv=$HOME/.local/bin/uv
elif command -v uv >/dev/null; then
  uv=$(command -v uv)
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
say "installing $target into $env_dir${uv:+ (uv)}"
# A different build of the same version counts as installed for pip and uv: remove
# the old one first (local, no index), so what is installed is exactly the target.
if (cd / && "$python" -c 'import importlib.metadata as m; m.version("skyguard")') >/dev/null 2>&1; then
  if [ -n "$uv" ]; then
    "$uv" pip uninstall --python "$python" --quiet skyguard >"$log" 2>&1 || status=$?
  else
    "$python" -m pip uninstall --yes --quiet skyguard >"$log" 2>&1 || status=$?
  fi
  [ "${status:-0}" = 0 ] || { tail -n 5 "$log" >&2; fail "removing the installed skyguard from $env_dir failed"; }
fi
if [ -n "$uv" ]; then
  "$uv" pip install --python "$python" --quiet "$target" >"$log" 2>&1 || status=$?
else
  "$python" -m pip install --quiet --disable-pip-version-check "$target" >"$log" 2>&1 || status=$?
fi
if [ "${status:-0}" != 0 ]; then
  tail -n 20 "$log" >&2
  for pattern in "${TRANSIENT_PATTERNS[@]}"; do
    if grep -Eiq -- "$pattern" "$log" && ! grep -Eiq -- "$(IFS='|'; echo "${FINAL_PATTERNS[*]}")" "$log"; then
      echo "skyguard setup: ERROR: installing $target failed for a transient reason ($pattern): exit $EXIT_RETRY, so SkyPilot may retry" >&2
      exit "$EXIT_RETRY"
    fi
  done
  fail "installing $target failed (exit ${status}); the lines above say why"
fi
installed || fail "installed, but 'skyguard' is missing from $env_dir/bin or does not import"
# A temp name of this node's own (mktemp: unique on a shared filesystem too): on Slurm every node of a cluster runs setup at once
# in the one shared home (and env), and a shared temp name lost the race ("mv: cannot
# stat"), failing the setup of a two-node job.
tmp_stamp=$(mktemp "$stamp.XXXXXX") && printf '%s\n' "$digest" >"$tmp_stamp" && mv "$tmp_stamp" "$stamp"
say "installed skyguard into $env_dir"

#!/usr/bin/env bash
# Make benchmarks/compare/.venv with NVIDIA's ft_launcher (nvidia-resiliency-ext) in it.
#
# A venv of its own, without the system's site-packages, so NVRx and its pins never
# touch the project's .venv. torch is pinned to the CPU build skyguard's .venv uses
# (2.13.0+cpu); a CUDA build is never pulled in. NVRx is the newest release that has
# a wheel for this Python and glibc: 0.5.0+ ship manylinux_2_39 wheels only (glibc
# >= 2.39) and 0.7.0 none for Python 3.11, so on Debian 12 (glibc 2.36) it is 0.4.1.
#   bash benchmarks/compare/setup.sh      idempotent; prints the versions installed
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "torch==2.13.0" "nvidia-resiliency-ext>=0.4.1,<0.8" psutil
"$venv/bin/python" - <<'PY'
from importlib.metadata import version

import torch

if torch.version.cuda is not None:
    raise SystemExit(f"setup: torch {torch.__version__} is a CUDA build; expected the CPU build")
print(f"setup: torch {torch.__version__}, nvidia-resiliency-ext {version('nvidia-resiliency-ext')}")
PY

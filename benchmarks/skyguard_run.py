"""How every benchmark starts the runner: ``python -m devops.skypilot run`` (what the
``skyguard`` console script runs) on a state dir of its own. Imported by the scripts
beside it, which are run as ``python benchmarks/NAME.py``."""

from __future__ import annotations

import sys
from pathlib import Path


def runner_argv(state: Path, *options: str) -> list[str]:
    """The runner's argv up to and including ``--``: append the command."""
    return [
        sys.executable,
        "-m",
        "devops.skypilot",
        "run",
        "--state-dir",
        str(state),
        *options,
        "--",
    ]

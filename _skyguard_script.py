"""The ``skyguard`` script's entry point: a module of its own name, outside ``devops``.

The script pip writes imports its entry module before any of skyguard's code runs. Were
that ``devops.skypilot.cli``, a training repo's own ``devops`` package found first (on
``PYTHONPATH``) would end it in Python's traceback, ``No module named 'devops.skypilot'``.
From here the failed import is caught and said in one line, exit 2. Nothing of skyguard's
imports while ``devops`` may be the repo's, so the check is loaded from its file.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

#: devops.skypilot.common.termination.EXIT_CONFIG_ERROR (tests/launch checks they agree).
EXIT_CONFIG_ERROR = 2
#: Standard library only, so it loads whatever ``devops`` is: the shadowing check.
PACKAGES_FILE = Path(__file__).resolve().parent / "devops" / "skypilot" / "common" / "packages.py"


def _shadowing(error: ImportError) -> str | None:
    spec = importlib.util.spec_from_file_location("_skyguard_packages", PACKAGES_FILE)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    problem: str | None = module.shadowing(error)
    return problem


def main() -> int:
    try:
        from devops.skypilot.cli import main as cli_main
    except ImportError as error:
        problem = _shadowing(error)
        if problem is None:
            raise
        print(f"skyguard: error: {problem}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return cli_main()

"""skyguard's import packages, ``devops`` and ``notifications``, are names a training repo may
use too. When an import of skyguard's own code fails because the name found first is the
repo's (the current directory or ``PYTHONPATH`` ahead of site-packages), say so in one
line instead of a traceback; and tell, before a launch, that a repo's own ``devops`` will
hide skyguard's heartbeat client from the training code on the nodes.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGES = ("devops", "notifications")
#: The directory holding this installation's ``devops/`` and ``notifications/``.
HOME = Path(__file__).resolve().parents[3]
DOCS = "docs/launch.md#a-repo-with-its-own-devops-or-notifications"


def _where(name: str) -> Path | None:
    """The file or folder the loaded module ``name`` came from (None: not loaded)."""
    module = sys.modules.get(name)
    if module is None:
        return None
    file = getattr(module, "__file__", None)
    if file:
        return Path(file).resolve()
    paths = list(getattr(module, "__path__", []) or [])
    return Path(paths[0]).resolve() if paths else None


def shadowing(error: ImportError) -> str | None:
    """One line naming the module that hides skyguard's, if that is why ``error`` happened."""
    name = (error.name or "").partition(".")[0]
    if name not in PACKAGES:
        return None
    where = _where(name)
    if where is None or where.is_relative_to(HOME / name):
        return None  # skyguard's own package: the import failed for another reason
    return (
        f"cannot import skyguard's {error.name!r}: {name!r} here is {where}, not skyguard's "
        f"({HOME / name}); a module of that name in the current directory or on PYTHONPATH "
        f"hides it: run skyguard from elsewhere or take it off PYTHONPATH ({DOCS})"
    )


def repo_hides_heartbeat(workdir: Path) -> Path | None:
    """The file in ``workdir`` that hides skyguard's ``devops`` (so its heartbeat client) from
    ``python train.py`` run there (the script's folder is ``sys.path[0]``): a module or
    package of that name, unless the package merges skyguard's into itself
    (``pkgutil.extend_path``, see the docs). ``notifications`` is skyguard's alone: only
    the runner imports it, and the runner does not run with the workdir on its path."""
    module = workdir / "devops.py"
    if module.is_file():
        return module
    init = workdir / "devops" / "__init__.py"
    if not init.is_file():
        return None
    try:
        merges = "extend_path" in init.read_text(encoding="utf-8", errors="replace")
    except OSError:
        merges = False
    return None if merges else init

"""Which recipe ``skyguard launch`` fills in, and ``skyguard init``, which writes one to customise.

The recipes ship with the distribution (``devops/skypilot/recipes/``, package data), so a
user's own training repo needs no copy of skyguard. A recipe is taken from the first of:

1. ``--recipe PATH``;
2. ``<workdir>/.skyguard/job.yaml``: the user's customised copy, written by ``skyguard init``
   (a skyguard-named folder, because ``recipes/`` in a training repo often means something
   else, e.g. training configs);
3. the recipe that ships with this skyguard.

In a clone of skyguard the shipped recipes are the top-level ``recipes/`` (linked), so
``sky launch recipes/job.yaml`` and ``skyguard launch`` read the same file.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from devops.skypilot.common.files import write_atomic
from devops.skypilot.common.termination import EXIT_CONFIG_ERROR

#: The recipes in this installation of skyguard (real files in a wheel; links into the
#: top-level ``recipes/`` in a clone).
SHIPPED = Path(__file__).resolve().parents[2] / "recipes"
#: The user's folder for a customised recipe, relative to the workdir.
USER_DIR = ".skyguard"
JOB = "job.yaml"
#: The installer the nodes run (shipped with the wheel, see :mod:`.wheel`).
SETUP = "setup.sh"


class RecipeError(Exception):
    """No usable recipe, or init would overwrite one: one line."""


def find_recipe(flag: str | None, workdir: Path) -> Path:
    """The recipe to fill in: ``--recipe``, else the workdir's customised one, else shipped."""
    if flag is not None:
        recipe = Path(flag).expanduser()
        if not recipe.is_file():
            raise RecipeError(f"no recipe at {recipe}: check --recipe PATH")
        return recipe
    custom = workdir / USER_DIR / JOB
    if custom.is_file():
        return custom
    shipped = SHIPPED / JOB
    if not shipped.is_file():
        raise RecipeError(
            f"no recipe at {shipped}: this skyguard installation is incomplete "
            "(reinstall it, or pass --recipe PATH)"
        )
    return shipped


def _version() -> str:
    try:
        return metadata.version("skyguard")
    except metadata.PackageNotFoundError:
        return "source"


def write_recipe(target_dir: Path, force: bool) -> Path:
    """Copy the shipped ``job.yaml`` into ``target_dir`` (atomically); returns its path."""
    target = target_dir / JOB
    if target.exists() and not force:
        raise RecipeError(f"{target} exists: edit it, or pass --force to replace it")
    text = (SHIPPED / JOB).read_text(encoding="utf-8")
    header = (
        f"# Written by `skyguard init` (skyguard {_version()}). `skyguard launch` run in this\n"
        "# repository reads this file instead of the recipe that ships with skyguard.\n"
    )
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(target, header + text, mode=0o644)
    except OSError as error:
        raise RecipeError(f"cannot write {target}: {error.strerror or error}") from None
    return target


# ---------------------------------------------------------------- skyguard init


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        metavar="DIR",
        help="the repository to write into [default: the git top level, else the current dir]",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing recipe")


def main(args: argparse.Namespace) -> int:
    """``skyguard init``: write ``.skyguard/job.yaml`` for customising; prints its path."""
    from devops.skypilot.client.git_state import GitCheckError, git_toplevel

    try:
        if args.dir is not None:
            root = Path(args.dir).expanduser()
            if not root.is_dir():
                raise RecipeError(f"--dir {args.dir}: not a directory")
        else:
            try:
                root = git_toplevel(Path.cwd()) or Path.cwd()
            except GitCheckError:
                root = Path.cwd()
        print(write_recipe(root / USER_DIR, args.force))
    except RecipeError as error:
        print(f"skyguard init: error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return 0

"""skyguard from a user's own training repo: the recipes ship with skyguard, ``skyguard init``
writes one to customise, and launch finds the right one (``--recipe``, then the repo's
``.skyguard/job.yaml``, then the shipped recipe). Real processes and real git repos."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from devops.skypilot.client.launch import recipes
from devops.skypilot.common.termination import EXIT_CONFIG_ERROR

from .test_launch import STATE, dry_run, git

REPO = Path(__file__).resolve().parents[2]


def skyguard(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYGUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "devops.skypilot", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    """A training repo as a new user has it: git, one train.py, no skyguard source."""
    work = tmp_path / "my-training"
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    (work / "train.py").write_text("print('training')\n")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "init")
    return work


def test_the_shipped_recipes_are_the_top_level_ones() -> None:
    """One source: in a clone the package's recipes are the top-level files (links), so
    ``sky launch recipes/job.yaml`` and ``skyguard launch`` read the same text."""
    for name in ("job.yaml", "sandbox.yaml", "setup.sh"):
        shipped = recipes.SHIPPED / name
        assert shipped.is_file(), shipped
        assert filecmp.cmp(shipped, REPO / "recipes" / name, shallow=False)


def test_pyproject_ships_the_recipes_as_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]["devops.skypilot"]
    shipped = {p.name for pattern in data for p in recipes.SHIPPED.parent.glob(pattern)}
    assert shipped >= {"job.yaml", "sandbox.yaml", "setup.sh"}


def test_a_repo_without_recipes_launches_with_the_shipped_one(user_repo: Path) -> None:
    (config,) = dry_run("--skip-git-check", *STATE, "--", "python", "train.py", cwd=user_repo)
    assert Path(config["workdir"]) == user_repo.resolve()
    assert config["envs"]["SKYGUARD_CMD"] == "python train.py"
    shipped = yaml.safe_load((recipes.SHIPPED / "job.yaml").read_text())
    assert config["resources"]["job_recovery"] == shipped["resources"]["job_recovery"]


def test_init_writes_a_recipe_that_launch_then_uses(user_repo: Path) -> None:
    result = skyguard("init", cwd=user_repo)
    assert result.returncode == 0, result.stderr
    written = user_repo / ".skyguard" / "job.yaml"
    assert result.stdout.strip() == str(written)
    assert "skyguard init" in written.read_text().splitlines()[0]
    assert yaml.safe_load(written.read_text()) == yaml.safe_load(
        (recipes.SHIPPED / "job.yaml").read_text()
    )
    # Customised: launch picks it up, from any directory of the repository.
    custom = yaml.safe_load(written.read_text())
    custom["envs"]["SKYGUARD_GRACE"] = "7s"
    written.write_text(yaml.safe_dump(custom))
    (user_repo / "sub").mkdir()
    (config,) = dry_run("--skip-git-check", *STATE, "--", "true", cwd=user_repo / "sub")
    assert config["envs"]["SKYGUARD_GRACE"] == "7s"
    # --recipe still wins over the repository's recipe.
    (config,) = dry_run(
        "--skip-git-check",
        "--recipe",
        str(recipes.SHIPPED / "job.yaml"),
        *STATE,
        "--",
        "true",
        cwd=user_repo,
    )
    assert config["envs"]["SKYGUARD_GRACE"] == "30s"


def test_init_never_overwrites_without_force(user_repo: Path) -> None:
    target = user_repo / ".skyguard" / "job.yaml"
    target.parent.mkdir()
    target.write_text("name: mine\n")
    result = skyguard("init", cwd=user_repo)
    assert result.returncode == EXIT_CONFIG_ERROR
    assert result.stderr.strip().splitlines() == [
        f"skyguard init: error: {target} exists: edit it, or pass --force to replace it"
    ]
    assert target.read_text() == "name: mine\n"
    forced = skyguard("init", "--force", "--dir", str(user_repo), cwd=REPO)
    assert forced.returncode == 0, forced.stderr
    assert "skyguard init" in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["job.yaml"]  # no temp file left


def test_init_into_a_missing_dir_is_one_line(tmp_path: Path) -> None:
    result = skyguard("init", "--dir", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG_ERROR
    assert "Traceback" not in result.stderr
    expected = f"skyguard init: error: --dir {tmp_path / 'nope'}: not a directory"
    assert result.stderr.strip() == expected

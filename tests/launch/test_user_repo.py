"""skyguard from a user's own training repo: the recipes ship with skyguard, ``skyguard init``
writes one to customise, and launch finds the right one (``--recipe``, then the repo's
``.skyguard/job.yaml``, then the shipped recipe). Real processes and real git repos."""

from __future__ import annotations

import base64
import filecmp
import hashlib
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from devops.skypilot.client.launch import recipes, wheel
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


# ---------------------------------------------------------------- the wheel the nodes get


def test_the_wheel_is_this_installation_and_the_same_bytes_every_time(tmp_path: Path) -> None:
    first = wheel.build_wheel(tmp_path)
    second = wheel.build_wheel(tmp_path / "elsewhere")
    assert first.name == second.name == f"skyguard-{metadata.version('skyguard')}-py3-none-any.whl"
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        names = archive.namelist()
        info = f"skyguard-{metadata.version('skyguard')}.dist-info"
        # Every module and the recipes, byte for byte; no caches.
        for relative in (
            "devops/skypilot/heartbeat.py",
            "notifications/__init__.py",
            "_skyguard_script.py",
        ):
            assert archive.read(relative) == (REPO / relative).read_bytes()
        for recipe in ("job.yaml", "setup.sh"):
            assert (
                archive.read(f"devops/skypilot/recipes/{recipe}")
                == (REPO / "recipes" / recipe).read_bytes()
            )
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert (
            "skyguard = _skyguard_script:main" in archive.read(f"{info}/entry_points.txt").decode()
        )
        # RECORD lists every other file with its real hash and size (pip checks it).
        record = archive.read(f"{info}/RECORD").decode().splitlines()
        listed = {line.split(",")[0]: line for line in record}
        assert set(listed) == set(names)
        for name in names:
            if name.endswith("RECORD"):
                continue
            data = archive.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert listed[name] == f"{name},sha256={digest.decode()},{len(data)}"


def test_launch_ships_the_wheel_and_its_setup_by_file_mounts(
    user_repo: Path, tmp_path: Path
) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    (config,) = dry_run("--skip-git-check", *STATE, "--", "true", env=env, cwd=user_repo)
    name = config["envs"]["SKYGUARD_WHEEL"]
    mounts = config["file_mounts"]
    shipped = Path(mounts[f"~/.skyguard/dist/{name}"])
    assert shipped.is_file() and not shipped.is_symlink()
    assert shipped.is_relative_to(tmp_path / "cache" / "skyguard" / "wheels")
    setup_sh = Path(mounts["~/.skyguard/dist/setup.sh"])
    assert not setup_sh.is_symlink()
    assert setup_sh.read_bytes() == (REPO / "recipes" / "setup.sh").read_bytes()
    # --state-root dropped only the state bucket's mount.
    assert set(mounts) == {f"~/.skyguard/dist/{name}", "~/.skyguard/dist/setup.sh"}
    # With the bucket: both, and the recipe's setup installs the shipped wheel.
    (bucket,) = dry_run("--skip-git-check", "--", "true", env=env, cwd=user_repo)
    assert set(bucket["file_mounts"]) == {*mounts, "${SKYGUARD_STATE_ROOT}"}
    assert "bash ~/.skyguard/dist/setup.sh" in bucket["setup"]


def test_the_wheel_name_is_reserved_for_launch(user_repo: Path) -> None:
    result = skyguard(
        "launch", "--skip-git-check", "--env", "SKYGUARD_WHEEL=x.whl", "--", "true", cwd=user_repo
    )
    assert result.returncode == EXIT_CONFIG_ERROR
    assert "set by skyguard launch itself" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

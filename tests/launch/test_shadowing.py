"""``devops`` and ``notifications`` are names a training repo may use too. A repo's module
found before skyguard's is one clear line (not a traceback), a launch from such a repo
says up front that the training code cannot import the heartbeat client, and the
documented fix (``pkgutil.extend_path`` in the repo's own ``devops/__init__.py``) works."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from devops.skypilot.client.launch.wheel import build_wheel
from devops.skypilot.common import packages
from devops.skypilot.common.termination import EXIT_CONFIG_ERROR

from .test_launch import STATE

REPO = Path(__file__).resolve().parents[2]
FIX = "from pkgutil import extend_path\n__path__ = extend_path(__path__, __name__)\n"


def python(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SKYGUARD_", "PYTHON"))}
    full.update(env)
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=full, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "layout",
    [
        {"notifications.py": "WHO = 'the training repo'\n"},
        {"notifications/__init__.py": "", "notifications/email.py": ""},
    ],
    ids=["module", "package"],
)
def test_a_repo_module_hiding_skyguards_is_one_line(tmp_path: Path, layout: dict[str, str]) -> None:
    repo = tmp_path / "repo"
    for name, text in layout.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    # `python -m` puts the current directory first on sys.path: the repo's module wins.
    result = python(
        "-m",
        "devops.skypilot",
        "run",
        "--state-dir",
        str(tmp_path / "state"),
        "--",
        "true",
        cwd=repo,
    )
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    hidden = next(iter(layout)).partition("/")[0]
    assert line.startswith("skyguard: error: cannot import skyguard's 'notifications")
    assert str(repo / hidden) in line and str(REPO / "notifications") in line
    assert packages.DOCS in line


@pytest.mark.parametrize(
    "layout",
    [
        {"devops/__init__.py": "", "devops/deploy.py": ""},
        {"devops.py": "WHO = 'the training repo'\n"},
    ],
    ids=["package", "module"],
)
def test_a_repo_devops_on_pythonpath_is_one_line_from_the_script(
    tmp_path: Path, layout: dict[str, str]
) -> None:
    """The ``skyguard`` script pip writes imports its entry point before any of skyguard's
    code runs: a repo's ``devops`` found first there is one line too, not a traceback. A
    wheel install (an editable one's finder runs before PYTHONPATH and hides nothing)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3.*/site-packages"))
    # skyguard's requirements from this venv (a plain path line: its .pth files do not run).
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = build_wheel(tmp_path / "cache")
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    install += ["install", "--quiet", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=120)
    repo = tmp_path / "repo"
    for name, text in layout.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    result = subprocess.run(
        [str(venv / "bin" / "skyguard"), "status", "x", "--state-dir", str(tmp_path / "s")],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    hidden = next(iter(layout)).partition("/")[0]
    assert line.startswith("skyguard: error: cannot import skyguard's 'devops.skypilot")
    assert str(repo / hidden) in line and str(site / "devops") in line
    # The same script without the repo on PYTHONPATH runs skyguard.
    clean = subprocess.run(
        [str(venv / "bin" / "skyguard"), "--help"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert clean.returncode == 0 and "notify-event" in clean.stdout, clean.stderr


def test_the_scripts_exit_code_is_the_runners_config_error() -> None:
    import _skyguard_script

    assert _skyguard_script.EXIT_CONFIG_ERROR == EXIT_CONFIG_ERROR


def test_an_unrelated_import_error_is_not_blamed_on_shadowing() -> None:
    error = ModuleNotFoundError("No module named 'wandb'", name="wandb")
    assert packages.shadowing(error) is None
    ours = ImportError("cannot import name 'Nope' from 'notifications'", name="notifications")
    import notifications  # noqa: F401  (skyguard's own, loaded)

    assert packages.shadowing(ours) is None


def test_launch_warns_when_the_repo_hides_the_heartbeat_client(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "devops").mkdir(parents=True)
    (repo / "devops" / "__init__.py").write_text("")
    (repo / "train.py").write_text("")
    result = python(
        "-m",
        "devops.skypilot",
        "launch",
        "--dry-run",
        "--skip-git-check",
        "--workdir",
        str(repo),
        *STATE,
        "--",
        "true",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"skyguard launch: warning: {repo / 'devops' / '__init__.py'} hides skyguard's 'devops' "
        "from code run in the workdir (`from devops.skypilot import heartbeat` fails there): "
        f"see {packages.DOCS}"
    ]
    (repo / "devops" / "__init__.py").write_text(FIX)
    assert packages.repo_hides_heartbeat(repo) is None


def test_the_documented_fix_lets_a_repo_devops_and_skyguards_live_together(
    tmp_path: Path,
) -> None:
    """A wheel install of skyguard (site), a repo whose own regular `devops` package comes
    first on sys.path: with the docs' two lines, both the repo's module and skyguard's
    heartbeat client import."""
    site = tmp_path / "site"
    with zipfile.ZipFile(build_wheel(tmp_path / "cache")) as archive:
        archive.extractall(site)
    repo = tmp_path / "repo"
    (repo / "devops").mkdir(parents=True)
    (repo / "devops" / "mine.py").write_text("WHO = 'repo'\n")
    probe = "import devops.mine, devops.skypilot.heartbeat as h; print(devops.mine.WHO, h.__file__)"
    (repo / "devops" / "__init__.py").write_text("")
    # -S: no site-packages, so only the repo and the wheel's files are on sys.path.
    hidden = python("-S", "-c", probe, cwd=repo, PYTHONPATH=str(site))
    assert hidden.returncode != 0 and "No module named 'devops.skypilot'" in hidden.stderr
    (repo / "devops" / "__init__.py").write_text(FIX)
    fixed = python("-S", "-c", probe, cwd=repo, PYTHONPATH=str(site))
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.split() == ["repo", str(site / "devops" / "skypilot" / "heartbeat.py")]
    # A repo folder without __init__.py is a namespace portion: skyguard's regular package
    # wins, and its own extend_path keeps the repo's modules importable.
    (repo / "devops" / "__init__.py").unlink()
    merged = python("-S", "-c", probe, cwd=repo, PYTHONPATH=str(site))
    assert merged.returncode == 0, merged.stderr
    assert merged.stdout.split() == fixed.stdout.split()

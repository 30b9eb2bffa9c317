"""The recipes, checked with SkyPilot's own parser and run for real where they can be.

``run:`` is executed by bash here with the variables SkyPilot would set, and
``setup.sh`` really installs skyguard into a fresh venv.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devops.skypilot.common.termination import EXIT_RETRY

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
SKYGUARD_BIN = Path(sys.executable).parent


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((RECIPES / name).read_text())
    return data


@pytest.mark.parametrize("name", ["job.yaml", "sandbox.yaml"])
def test_recipe_is_a_valid_skypilot_task(name: str) -> None:
    import sky

    task = sky.Task.from_yaml_config(load(name))
    task.validate_name()
    assert task.setup is not None and task.setup.strip() == "bash recipes/setup.sh"


def test_recover_on_exit_codes_is_exactly_the_runners_retry_code() -> None:
    recovery = load("job.yaml")["resources"]["job_recovery"]
    assert recovery["recover_on_exit_codes"] == [EXIT_RETRY]
    # Any other exit is the runner's final decision: SkyPilot must not restart it.
    assert recovery["max_restarts_on_errors"] == 0


def test_skypilot_reads_the_same_recovery_policy() -> None:
    import sky

    (resources,) = sky.Task.from_yaml_config(load("job.yaml")).resources
    assert resources.job_recovery["recover_on_exit_codes"] == [EXIT_RETRY]


@pytest.mark.parametrize("name", ["job.yaml", "sandbox.yaml"])
def test_recipe_runs_on_any_infra(name: str) -> None:
    resources = load(name).get("resources") or {}
    baked = {"cloud", "infra", "region", "zone", "instance_type", "accelerators", "image_id"}
    assert not baked & set(resources), f"{name} pins {baked & set(resources)}"


def test_credentials_live_only_under_secrets() -> None:
    job = load("job.yaml")
    secret_words = ("TOKEN", "WEBHOOK", "API_KEY", "PASSWORD")
    assert not [k for k in job["envs"] if any(word in k for word in secret_words)]
    assert set(job["secrets"]) >= {"SKYGUARD_DISCORD_WEBHOOK_URL", "SKYGUARD_GITHUB_TOKEN"}
    assert all(value == "" for value in job["secrets"].values())


def test_state_dir_is_mounted_from_a_bucket_named_by_an_env_knob() -> None:
    import sky

    job = load("job.yaml")
    (mount,) = job["file_mounts"].items()
    assert mount[0] == "${SKYGUARD_STATE_ROOT}"
    assert mount[1]["name"] == "${SKYGUARD_STATE_BUCKET}"
    assert mount[1]["mode"] in ("MOUNT_CACHED", "MOUNT")
    envs = dict(job["envs"])
    task = sky.Task.from_yaml_config(job)
    storage = task.storage_mounts[envs["SKYGUARD_STATE_ROOT"]]
    assert storage.name == envs["SKYGUARD_STATE_BUCKET"]


def test_runner_knobs_are_env_defaults() -> None:
    envs = load("job.yaml")["envs"]
    for knob in (
        "SKYGUARD_HEARTBEAT_TIMEOUT",
        "SKYGUARD_MAX_RUNTIME",
        "SKYGUARD_GRACE",
        "SKYGUARD_GPUS",
        "SKYGUARD_NODES",
    ):
        assert knob in envs


# ---------------------------------------------------------------- run: for real


def run_script(
    tmp_path: Path, command: str, task_id: str = "sky-managed-x_demo_7-0"
) -> subprocess.CompletedProcess[str]:
    """Execute job.yaml's ``run:`` as SkyPilot would: bash, from the workdir, with its envs."""
    job = load("job.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYGUARD_", "SKYPILOT_"))}
    env.update({k: str(v) for k, v in job["envs"].items()})
    env.update(
        SKYGUARD_CMD=command,
        SKYGUARD_STATE_ROOT=str(tmp_path / "state"),
        SKYPILOT_TASK_ID=task_id,
        SKYPILOT_NODE_RANK="0",
        SKYPILOT_NUM_NODES="1",
        TMPDIR=str(tmp_path),
        HOME=str(tmp_path / "home"),
        PATH=f"{SKYGUARD_BIN}:{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
    )
    return subprocess.run(
        ["bash", "-c", job["run"]], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_run_script_supervises_the_command_with_state_keyed_by_task_id(tmp_path: Path) -> None:
    result = run_script(tmp_path, f"{sys.executable} examples/train.py --steps 2 --step-time 0.01")
    assert result.returncode == 0, result.stderr
    record = tmp_path / "state" / "sky-managed-x_demo_7-0" / "node-0" / "termination.json"
    assert '"reason": "completed"' in record.read_text()
    assert "skyguard: termination" in result.stderr


def test_run_script_passes_the_runners_exit_code_through(tmp_path: Path) -> None:
    result = run_script(tmp_path, "exit 3")
    assert result.returncode == 3


def test_run_script_without_a_command_is_a_config_error(tmp_path: Path) -> None:
    result = run_script(tmp_path, "")
    assert result.returncode == 2
    assert "SKYGUARD_CMD is empty" in result.stderr


# ---------------------------------------------------------------- setup.sh for real


def copy_source(target: Path) -> Path:
    target.mkdir()
    shutil.copy(REPO / "pyproject.toml", target)
    for package in ("devops", "notifications", "recipes"):
        shutil.copytree(
            REPO / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return target


def setup(src: Path, venv: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    env.update(VIRTUAL_ENV=str(venv), HOME=str(venv.parent / "home"), **extra)
    return subprocess.run(
        ["bash", str(src / "recipes" / "setup.sh")],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("setup")
    src = copy_source(root / "src")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    first = setup(src, venv)
    assert first.returncode == 0, first.stderr
    assert "installed skyguard" in first.stdout
    return src, venv


def test_setup_installs_skyguard_into_the_active_env(installed: tuple[Path, Path]) -> None:
    _, venv = installed
    result = subprocess.run(
        [str(venv / "bin" / "skyguard"), "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "--heartbeat-timeout" in result.stdout


def test_setup_skips_an_unchanged_install_and_redoes_a_changed_one(
    installed: tuple[Path, Path],
) -> None:
    src, venv = installed
    again = setup(src, venv)
    assert again.returncode == 0
    assert "already installed" in again.stdout
    marker = src / "devops" / "skypilot" / "_changed_for_test.py"
    marker.write_text("CHANGED = True\n")
    try:
        changed = setup(src, venv)
        assert changed.returncode == 0, changed.stderr
        assert "installed skyguard" in changed.stdout
        probe = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import devops.skypilot._changed_for_test"],
            cwd="/",
            timeout=60,
        )
        assert probe.returncode == 0
    finally:
        marker.unlink()


def test_setup_fails_with_one_clear_line(tmp_path: Path, installed: tuple[Path, Path]) -> None:
    src, venv = installed
    bad = setup(src, venv, SKYGUARD_EXTRAS="not valid!")
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("skyguard setup: ERROR: SKYGUARD_EXTRAS")
    lonely = tmp_path / "lonely"
    (lonely / "recipes").mkdir(parents=True)
    shutil.copy(RECIPES / "setup.sh", lonely / "recipes")
    missing = setup(lonely, venv)
    assert missing.returncode == 1
    assert "no pyproject.toml" in missing.stderr
    broken = tmp_path / "broken"
    (broken / "recipes").mkdir(parents=True)
    shutil.copy(RECIPES / "setup.sh", broken / "recipes")
    (broken / "pyproject.toml").write_text("this is [not toml\n")
    failed = setup(broken, venv)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith("skyguard setup: ERROR: installing")


def test_setup_exits_75_when_the_package_index_is_unreachable(tmp_path: Path) -> None:
    """A transient install failure asks SkyPilot for a retry; a bad request stays final."""
    src = copy_source(tmp_path / "src")
    venv = tmp_path / "venv"
    # No system site-packages: the install has to reach the index for its dependencies.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    with socket.socket() as unreachable:
        # Bound but not listening: every connection is refused, and no one else gets the port.
        unreachable.bind(("127.0.0.1", 0))
        port = unreachable.getsockname()[1]
        result = setup(
            src,
            venv,
            PIP_CONFIG_FILE=os.devnull,
            PIP_INDEX_URL=f"http://127.0.0.1:{port}/simple",
            PIP_RETRIES="1",
            PIP_TIMEOUT="5",
        )
    assert result.returncode == EXIT_RETRY, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("skyguard setup: ERROR: installing")
    assert "transient" in result.stderr


def test_setup_retry_code_is_the_recipe_retry_code() -> None:
    script = (RECIPES / "setup.sh").read_text()
    assert f"\nEXIT_RETRY={EXIT_RETRY}\n" in script

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


#: What `sky jobs launch recipes/job.yaml --env SKYGUARD_STATE_BUCKET=...` passes.
BUCKET = [("SKYGUARD_STATE_BUCKET", "my-team-skyguard")]


@pytest.mark.parametrize("name", ["job.yaml", "sandbox.yaml"])
def test_recipe_is_a_valid_skypilot_task(name: str) -> None:
    import sky

    task = sky.Task.from_yaml_config(load(name), env_overrides=BUCKET)
    task.validate_name()
    assert task.setup is not None
    # The clone's own source when no wheel is shipped (`sky launch` from a clone).
    assert "bash recipes/setup.sh" in task.setup


def test_recover_on_exit_codes_is_exactly_the_runners_retry_code() -> None:
    recovery = load("job.yaml")["resources"]["job_recovery"]
    assert recovery["recover_on_exit_codes"] == [EXIT_RETRY]
    # Any other exit is the runner's final decision: SkyPilot must not restart it.
    assert recovery["max_restarts_on_errors"] == 0


def test_skypilot_reads_the_same_recovery_policy() -> None:
    import sky

    (resources,) = sky.Task.from_yaml_config(load("job.yaml"), env_overrides=BUCKET).resources
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
    assert mount[1]["mode"] == "MOUNT_CACHED"
    root = job["envs"]["SKYGUARD_STATE_ROOT"]
    task = sky.Task.from_yaml_config(job, env_overrides=BUCKET)
    storage = task.storage_mounts[root]
    assert storage.name == "my-team-skyguard"


def test_without_a_bucket_skypilots_parser_names_the_variable_to_set() -> None:
    """Bucket names are global: the recipe has no default one, and `sky jobs launch`
    without one stops in SkyPilot's own parser with a line saying what to pass."""
    import sky

    job = load("job.yaml")
    assert job["envs"]["SKYGUARD_STATE_BUCKET"] is None
    with pytest.raises(ValueError) as error:
        sky.Task.from_yaml_config(job)
    message = str(error.value)
    assert "Environment variable 'SKYGUARD_STATE_BUCKET' is None" in message
    assert "--env flag" in message and "\n" not in message


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


TASK_ID = "sky-managed-2026-11-23-00-14-53-926267_demo_7-0"


def run_env(tmp_path: Path, command: str, task_id: str) -> dict[str, str]:
    """The environment SkyPilot gives job.yaml's ``run:``: its envs and SKYPILOT_* ones."""
    job = load("job.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYGUARD_", "SKYPILOT_"))}
    env.update({k: "" if v is None else str(v) for k, v in job["envs"].items()})
    env.update(
        SKYGUARD_CMD=command,
        SKYGUARD_STATE_ROOT=str(tmp_path / "state"),
        SKYPILOT_TASK_ID=task_id,
        SKYPILOT_MANAGED_JOB_ID=task_id.rpartition("_")[2].partition("-")[0],
        SKYPILOT_NODE_RANK="0",
        SKYPILOT_NUM_NODES="1",
        TMPDIR=str(tmp_path),
        HOME=str(tmp_path / "home"),
        PATH=f"{SKYGUARD_BIN}:{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
    )
    return env


def run_script(
    tmp_path: Path, command: str, task_id: str = TASK_ID
) -> subprocess.CompletedProcess[str]:
    """Execute job.yaml's ``run:`` with bash, from the workdir, with SkyPilot's envs."""
    return subprocess.run(
        ["bash", "-c", load("job.yaml")["run"]],
        cwd=REPO,
        env=run_env(tmp_path, command, task_id),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_run_script_keys_state_on_the_job_not_the_controllers_timestamp(tmp_path: Path) -> None:
    result = run_script(tmp_path, f"{sys.executable} examples/train.py --steps 2 --step-time 0.01")
    assert result.returncode == 0, result.stderr
    record = tmp_path / "state" / "demo_7-0" / "node-0" / "termination.json"
    assert '"reason": "completed"' in record.read_text()
    assert "skyguard: termination" in result.stderr
    # The jobs controller restarted: a new timestamp in SKYPILOT_TASK_ID, the same job.
    restarted = TASK_ID.replace("00-14-53-926267", "03-01-09-000001")
    again = run_script(tmp_path, "exit 0", task_id=restarted)
    assert again.returncode == 0, again.stderr
    assert '"attempt": 2' in record.read_text()


def test_run_script_passes_the_runners_exit_code_through(tmp_path: Path) -> None:
    result = run_script(tmp_path, "exit 3")
    assert result.returncode == 3


def test_run_script_without_a_command_is_a_config_error(tmp_path: Path) -> None:
    result = run_script(tmp_path, "")
    assert result.returncode == 2
    assert "SKYGUARD_CMD is empty" in result.stderr


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("exit 3", 3),
        # Never beats: a hang after 1 s, the runner's retryable 75.
        ("exec sleep 60", EXIT_RETRY),
    ],
)
def test_skypilots_appended_flush_runs_and_exits_with_the_runners_code(
    tmp_path: Path, command: str, code: int
) -> None:
    """``run:`` wrapped exactly as SkyPilot 0.14.1 runs it (TaskCodeGen.build_task_bash_script
    appends the MOUNT_CACHED flush, log_lib.make_task_bash_script the preamble, then
    ``/bin/bash -i FILE``): the flush's first line sees the runner's code, and the
    script ends with it. With ``exec`` or ``set -e`` the flush never runs."""
    from sky.backends.task_codegen import TaskCodeGen
    from sky.skylet import log_lib

    env = run_env(tmp_path, command, TASK_ID)
    env.update(SKYGUARD_HEARTBEAT_TIMEOUT="1s", SKYGUARD_GRACE="1s")
    home = Path(env["HOME"])
    home.mkdir()
    (home / "sky_workdir").symlink_to(REPO)  # SkyPilot's script starts with `cd ~/sky_workdir`
    script = tmp_path / "sky_app_run"
    script.write_text(
        log_lib.make_task_bash_script(TaskCodeGen.build_task_bash_script(load("job.yaml")["run"]))
    )
    # xtrace shows every command the script reaches, the flush's included.
    result = subprocess.run(
        ["/bin/bash", "-x", "-i", str(script)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == code, result.stderr[-2000:]
    assert f"+ __skypilot_user_exit_code={code}" in result.stderr
    assert f"+ exit {code}" in result.stderr.splitlines()[-1]


# ---------------------------------------------------------------- setup.sh for real


def copy_source(target: Path) -> Path:
    target.mkdir()
    shutil.copy(REPO / "pyproject.toml", target)
    shutil.copy(REPO / "_skyguard_script.py", target)
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
    # A regular (setuptools) install carries the recipes as package data.
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "from devops.skypilot.client.launch.recipes import SHIPPED; print(SHIPPED)",
        ],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    shipped = Path(probe.stdout.strip())
    assert shipped.is_relative_to(venv), probe
    for name in ("job.yaml", "sandbox.yaml", "setup.sh"):
        assert (shipped / name).read_bytes() == (RECIPES / name).read_bytes()


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


def test_setup_installs_exactly_the_shipped_wheel(
    tmp_path: Path, installed: tuple[Path, Path]
) -> None:
    """What a node of `skyguard launch` from a user's repo does: setup.sh and the client's
    wheel in ~/.skyguard/dist (file_mounts), the workdir a repo with no skyguard in it.
    (Last in this module: it replaces the source install the tests above share.)"""
    from devops.skypilot.client.launch.wheel import build_wheel

    _, venv = installed
    dist = tmp_path / "home" / ".skyguard" / "dist"
    dist.mkdir(parents=True)
    wheel = Path(shutil.copy(build_wheel(tmp_path / "cache"), dist))
    shutil.copy(RECIPES / "setup.sh", dist)
    workdir = tmp_path / "sky_workdir"
    workdir.mkdir()
    (workdir / "train.py").write_text("print('training')\n")

    def node_setup(name: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
        env.update(VIRTUAL_ENV=str(venv), HOME=str(tmp_path / "home"), SKYGUARD_WHEEL=name)
        return subprocess.run(
            ["bash", "-c", load("job.yaml")["setup"]],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    first = node_setup(wheel.name)
    assert first.returncode == 0, first.stderr
    assert f"installing {wheel}" in first.stdout
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import devops.skypilot.heartbeat as h, importlib.metadata as m;"
            "print(h.__file__); print(m.distribution('skyguard').read_text('INSTALLER'))",
        ],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    installed_file = Path(probe.stdout.splitlines()[0])
    assert installed_file.is_relative_to(venv)
    assert installed_file.read_bytes() == (REPO / "devops/skypilot/heartbeat.py").read_bytes()
    assert (installed_file.parent / "recipes" / "job.yaml").read_bytes() == (
        RECIPES / "job.yaml"
    ).read_bytes()
    again = node_setup(wheel.name)
    assert again.returncode == 0 and "already installed" in again.stdout, again.stderr
    missing = node_setup("skyguard-9.9-py3-none-any.whl")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"skyguard setup: ERROR: no {dist}/skyguard-9.9-py3-none-any.whl: skyguard launch "
        "ships it by file_mounts (was it changed?)"
    ]
    # Without a wheel, in a repo that is not a clone of skyguard: nothing to install.
    (workdir / "recipes").mkdir()
    shutil.copy(RECIPES / "setup.sh", workdir / "recipes")
    nothing = node_setup("")
    assert nothing.returncode == 1
    assert "no skyguard to install" in nothing.stderr

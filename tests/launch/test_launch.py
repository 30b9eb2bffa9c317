"""``skyguard launch`` offline: every --dry-run output goes through SkyPilot's own parser,
bad input is one line and a non-zero exit, secrets never show.

Launch runs as a real process (``python -m devops.skypilot launch``); nothing is mocked.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devops.skypilot.cli import OneLineParser
from devops.skypilot.client.launch import command as launch_command
from devops.skypilot.client.launch import request as launch_request
from devops.skypilot.client.launch import task as launch_task
from devops.skypilot.client.launch.identity import BUCKET_NAME, default_state_bucket
from devops.skypilot.common.termination import EXIT_CONFIG_ERROR

REPO = Path(__file__).resolve().parents[2]
SECRET_VALUE = "https://discord.example/api/webhooks/1234/s3cr3t-t0ken-value"
STATE = ("--state-root", "/shared/skyguard")


def run_launch(
    *argv: str, cwd: Path = REPO, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SKYGUARD_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "devops.skypilot", "launch", *argv],
        cwd=cwd,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def parse(*argv: str) -> argparse.Namespace:
    parser = OneLineParser(prog="skyguard launch")
    launch_command.add_arguments(parser)
    return parser.parse_args(list(argv))


def dry_run(
    *argv: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> list[dict[str, Any]]:
    """``--dry-run`` in this process (SkyPilot is imported once, not per call)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        status = launch_command.run(parse("--dry-run", *argv), env or {}, cwd)
    assert status == 0
    return [doc for doc in yaml.safe_load_all(out.getvalue()) if doc is not None]


def assert_valid_skypilot_task(config: dict[str, Any]) -> Any:
    import sky

    task = sky.Task.from_yaml_config(json.loads(json.dumps(config)))
    task.validate_name()
    return task


# ---------------------------------------------------------------- --dry-run output


def test_dry_run_prints_a_valid_task_with_every_flag_applied() -> None:
    command = ["python", "train.py", "--lr", "3e-4", "--tag", "it's quoted"]
    (config,) = dry_run(
        "--skip-git-check",
        "--name",
        "exp-1",
        "--gpus",
        "H100:8",
        "--nodes",
        "2",
        "--cpus",
        "16+",
        "--memory",
        "64+",
        "--infra",
        "aws",
        "--no-spot",
        "--heartbeat-timeout",
        "10m",
        "--max-runtime",
        "2h",
        "--grace",
        "45s",
        "--env",
        "FOO=bar",
        "--",
        *command,
    )
    task = assert_valid_skypilot_task(config)
    assert config["name"] == "exp-1"
    assert config["num_nodes"] == 2
    assert config["resources"]["accelerators"] == "H100:8"
    assert config["resources"]["use_spot"] is False
    assert config["resources"]["job_recovery"]["recover_on_exit_codes"] == [75]
    envs = config["envs"]
    assert shlex.split(envs["SKYGUARD_CMD"]) == command
    assert envs["SKYGUARD_RUN_ID"] == envs["SKYGUARD_JOB_NAME"] == "exp-1"
    assert envs["SKYGUARD_HEARTBEAT_TIMEOUT"] == "10m"
    assert envs["SKYGUARD_MAX_RUNTIME"] == "2h"
    assert envs["SKYGUARD_GRACE"] == "45s"
    assert envs["SKYGUARD_GPUS"] == "H100:8"
    assert envs["SKYGUARD_NODES"] == "2"
    assert envs["FOO"] == "bar"
    assert Path(config["workdir"]) == REPO
    (resources,) = task.resources
    assert resources.use_spot is False


def test_state_defaults_to_the_bucket_mount_and_state_root_replaces_it() -> None:
    (bucket,) = dry_run("--skip-git-check", "--state-bucket", "team-skyguard", "--", "true")
    assert "${SKYGUARD_STATE_ROOT}" in bucket["file_mounts"]
    assert bucket["envs"]["SKYGUARD_STATE_BUCKET"] == "team-skyguard"
    task = assert_valid_skypilot_task(bucket)
    assert task.storage_mounts[bucket["envs"]["SKYGUARD_STATE_ROOT"]].name == "team-skyguard"

    (shared,) = dry_run("--skip-git-check", *STATE, "--", "true")
    # Only the state bucket's mount goes; the skyguard the nodes install stays.
    assert set(shared["file_mounts"]) == {
        f"~/.skyguard/dist/{shared['envs']['SKYGUARD_WHEEL']}",
        "~/.skyguard/dist/setup.sh",
    }
    assert "SKYGUARD_STATE_BUCKET" not in shared["envs"]
    assert shared["envs"]["SKYGUARD_STATE_ROOT"] == "/shared/skyguard"
    assert_valid_skypilot_task(shared)


def test_without_a_bucket_each_user_and_project_gets_its_own(repo: Path, tmp_path: Path) -> None:
    """No global default name: the bucket is derived from the user and the project's
    origin, the same on every launch, and one SkyPilot accepts for S3 and GCS."""
    from sky.data.storage import GcsStore, S3Store

    (config,) = dry_run("--", "true", cwd=repo)
    bucket = config["envs"]["SKYGUARD_STATE_BUCKET"]
    assert bucket.startswith("skyguard-") and "-work-" in bucket  # project = its directory
    assert bucket != "skyguard-state"
    S3Store.validate_name(bucket)
    GcsStore.validate_name(bucket)
    task = assert_valid_skypilot_task(config)
    assert task.storage_mounts[config["envs"]["SKYGUARD_STATE_ROOT"]].name == bucket
    (again,) = dry_run("--", "true", cwd=repo)
    assert again["envs"]["SKYGUARD_STATE_BUCKET"] == bucket
    # Another project of the same name (another origin) gets another bucket.
    other = tmp_path / "elsewhere" / "work"
    shutil.copytree(repo, other)
    git(other, "remote", "set-url", "origin", str(tmp_path / "other.git"))
    (moved,) = dry_run("--skip-git-check", "--", "true", cwd=other)
    assert moved["envs"]["SKYGUARD_STATE_BUCKET"] != bucket
    # A bucket given by flag, --env or the recipe wins.
    (given,) = dry_run("--env", "SKYGUARD_STATE_BUCKET=team-b", "--", "true", cwd=repo)
    assert given["envs"]["SKYGUARD_STATE_BUCKET"] == "team-b"


@pytest.mark.parametrize(
    ("user", "project"),
    [
        ("root", "trainer"),
        ("Jane.Doe", "My_Project"),
        ("u" * 80, "p" * 80),
        ("-", "."),
        ("google", "googoogle-lab"),
        ("x", "ünïcødé"),
    ],
)
def test_derived_bucket_names_are_valid_for_s3_and_gcs(user: str, project: str) -> None:
    from sky.data.storage import GcsStore, S3Store

    name = default_state_bucket(user, project, f"https://git.example/{project}.git")
    assert BUCKET_NAME.fullmatch(name) and len(name) <= 63
    assert "goog" not in name
    S3Store.validate_name(name)
    GcsStore.validate_name(name)
    assert name == default_state_bucket(user, project, f"https://git.example/{project}.git")
    assert name != default_state_bucket(user + "2", project, f"https://git.example/{project}.git")


def test_every_launch_stamps_its_own_run_key() -> None:
    """The runner keys state on SKYGUARD_RUN_KEY: the same across recoveries (it is in
    the task), new for every launch, even under the same --name."""
    (first,) = dry_run("--skip-git-check", "--name", "exp", *STATE, "--", "true")
    (second,) = dry_run("--skip-git-check", "--name", "exp", *STATE, "--", "true")
    keys = [first["envs"]["SKYGUARD_RUN_KEY"], second["envs"]["SKYGUARD_RUN_KEY"]]
    assert all(re.fullmatch(r"exp-[0-9a-f]{8}", key) for key in keys), keys
    assert keys[0] != keys[1]


def test_copies_are_separate_runs() -> None:
    configs = dry_run("--skip-git-check", "--name", "sweep", "--copies", "3", *STATE, "--", "true")
    assert [c["name"] for c in configs] == ["sweep-1", "sweep-2", "sweep-3"]
    assert len({c["envs"]["SKYGUARD_RUN_ID"] for c in configs}) == 3
    assert len({c["envs"]["SKYGUARD_RUN_KEY"] for c in configs}) == 3
    for config in configs:
        assert_valid_skypilot_task(config)


def test_dump_config_json_is_the_same_task() -> None:
    out = io.StringIO()
    args = parse(
        "--dump-config", "json", "--skip-git-check", "--name", "j1", *STATE, "--", "echo", "hi"
    )
    with contextlib.redirect_stdout(out):
        assert launch_command.run(args, {}, REPO) == 0
    config = json.loads(out.getvalue())
    assert config["name"] == "j1"
    assert_valid_skypilot_task(config)
    (from_yaml,) = dry_run("--skip-git-check", "--name", "j1", *STATE, "--", "echo", "hi")
    # Every launch stamps a new run key; everything else is the same task.
    for each in (config, from_yaml):
        assert each["envs"].pop("SKYGUARD_RUN_KEY").startswith("j1-")
    assert from_yaml == config


def test_env_file_sets_envs_and_env_flags_win(tmp_path: Path) -> None:
    env_file = tmp_path / "job.env"
    env_file.write_text("# team defaults\nexport DATA_DIR=/data\nMODEL='llama 7b'\n\nSEED=1\n")
    (config,) = dry_run(
        "--skip-git-check", "--env-file", str(env_file), "--env", "SEED=2", *STATE, "--", "true"
    )
    envs = config["envs"]
    assert (envs["DATA_DIR"], envs["MODEL"], envs["SEED"]) == ("/data", "llama 7b", "2")
    env_file.write_text("DATA_DIR=/data\nnot a line\n")
    result = run_launch("--skip-git-check", "--env-file", str(env_file), "--", "true")
    _assert_one_line_error(result, ":2: expected KEY=VALUE", EXIT_CONFIG_ERROR)


def test_recipe_envs_are_the_defaults_for_gpus_and_nodes(tmp_path: Path) -> None:
    recipe = yaml.safe_load((REPO / "recipes" / "job.yaml").read_text())
    recipe["envs"].update(SKYGUARD_GPUS="A100:2", SKYGUARD_NODES="3")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(recipe))
    (config,) = dry_run("--skip-git-check", "--recipe", str(path), *STATE, "--", "true")
    assert config["resources"]["accelerators"] == "A100:2"
    assert config["num_nodes"] == 3
    (flagged,) = dry_run(
        "--skip-git-check",
        "--recipe",
        str(path),
        "--gpus",
        "L4:1",
        "--nodes",
        "1",
        *STATE,
        "--",
        "true",
    )
    assert flagged["resources"]["accelerators"] == "L4:1"
    assert flagged["num_nodes"] == 1
    assert_valid_skypilot_task(flagged)


@pytest.mark.parametrize("fmt", ["--dry-run", "--dump-config=json"])
def test_secrets_never_appear_in_output(fmt: str) -> None:
    result = run_launch(
        fmt,
        "--skip-git-check",
        "--secret",
        "SKYGUARD_DISCORD_WEBHOOK_URL",
        "--verbose",
        *STATE,
        "--",
        "python",
        "train.py",
        env={"SKYGUARD_DISCORD_WEBHOOK_URL": SECRET_VALUE},
    )
    assert result.returncode == 0, result.stderr
    assert SECRET_VALUE not in result.stdout + result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr
    assert launch_task.REDACTED in result.stdout


def test_secret_values_stay_out_of_repr_and_reach_only_the_task() -> None:
    args = parse("--skip-git-check", "--secret", "HOOK", *STATE, "--", "true")
    request = launch_request.build_request(args, {"HOOK": SECRET_VALUE}, REPO)
    assert SECRET_VALUE not in repr(request)
    (config,) = launch_task.task_configs(request, launch_request.load_recipe(request.recipe))
    assert config["secrets"]["HOOK"] == SECRET_VALUE
    assert launch_task.redact(config)["secrets"]["HOOK"] == launch_task.REDACTED
    task = assert_valid_skypilot_task(config)
    assert task.secrets["HOOK"].get_secret_value() == SECRET_VALUE


# ---------------------------------------------------------------- names follow SkyPilot


def test_name_rules_are_skypilots() -> None:
    from sky import task as sky_task
    from sky.skylet import constants
    from sky.utils import common_utils

    assert launch_request.CLUSTER_NAME_REGEX == constants.CLUSTER_NAME_VALID_REGEX
    assert launch_request.TASK_NAME_REGEX == sky_task._VALID_NAME_REGEX
    assert launch_request.ENV_NAME_REGEX == common_utils._VALID_ENV_VAR_REGEX


@pytest.mark.parametrize(
    "name",
    [
        "exp1",
        "a",
        "my-run.v2",
        "run_3",
        "A-b_c.d",
        "x--y",
        "1abc",
        "-abc",
        "abc-",
        "a b",
        "a---b",
        "ab_",
        "run/1",
        "naïve",
        "",
    ],
)
def test_check_name_agrees_with_skypilot(name: str) -> None:
    import sky
    from sky.utils import common_utils

    try:
        common_utils.check_cluster_name_is_valid(name)
        sky.Task(name=name).validate_name()
        sky_ok = bool(name)
    except Exception:
        sky_ok = False
    try:
        launch_request.check_name(name)
        ours = True
    except launch_request.LaunchError:
        ours = False
    assert ours == sky_ok


def test_default_name_is_valid() -> None:
    assert launch_request.check_name(launch_request.default_name(0.0))


# ---------------------------------------------------------------- bad input


BAD_INPUT: list[tuple[list[str], str]] = [
    (["--name", "9lives", "--", "true"], "--name '9lives' is not a valid SkyPilot name"),
    (["--name", "bad_", "--", "true"], "not a valid SkyPilot name"),
    (["--run-id", "has space", "--", "true"], "not a valid SkyPilot name"),
    (["--cluster", "1c", "--", "true"], "--cluster '1c' is not a valid"),
    (["--env", "1X=2", "--", "true"], "'1X' is not a valid variable name"),
    (["--env", "SKYGUARD_E2E_UNSET_VAR", "--", "true"], "not set in the local environment"),
    (["--env", "SKYGUARD_CMD=ls", "--", "true"], "set by skyguard launch itself"),
    (["--env", "SKYGUARD_RUN_KEY=old-run", "--", "true"], "set by skyguard launch itself"),
    (["--env", "A=1", "--env", "A=2", "--", "true"], "--env A given twice"),
    (["--env", "SKYGUARD_GRACE=5s", "--grace", "9s", "--", "true"], "both given"),
    (["--secret", "SKYGUARD_E2E_MISSING_SECRET", "--", "true"], "not set (or empty)"),
    (["--secret", "TOKEN=abc", "--", "true"], "pass only the name"),
    (["--env", "X=1", "--secret", "X", "--", "true"], "both --env and --secret"),
    (["--heartbeat-timeout", "soon", "--", "true"], "--heartbeat-timeout: not a duration"),
    (["--max-runtime=-5m", "--", "true"], "--max-runtime: duration must not be negative"),
    (["--copies", "0", "--", "true"], "--copies: must be at least 1"),
    (["--copies", "two", "--", "true"], "--copies: not a whole number"),
    (["--nodes", "x", "--", "true"], "--nodes: not a whole number"),
    (["--gpus", "8", "--", "true"], "--gpus '8': use TYPE or TYPE:COUNT"),
    (["--cpus", " ", "--", "true"], "--cpus must not be empty"),
    (["--cluster", "c1", "--copies", "2", "--", "true"], "--copies needs managed jobs"),
    (["--state-root", "relative/path", "--", "true"], "must be an absolute path"),
    (["--state-root", "/a", "--state-bucket", "b-1", "--", "true"], "exclude each other"),
    (["--state-bucket", "Bad_Bucket", "--", "true"], "not a valid bucket name"),
    (["--recipe", "/nonexistent/job.yaml", "--", "true"], "no recipe at /nonexistent/job.yaml"),
    (["--env-file", "/nonexistent.env", "--", "true"], "--env-file /nonexistent.env: No such"),
    (["--workdir", "/nonexistent", "--", "true"], "--workdir /nonexistent: not a directory"),
    ([], "no command given"),
    (["--", "--oops"], "unknown option '--oops'"),
]


def _assert_one_line_error(
    result: subprocess.CompletedProcess[str], expected: str, code: int
) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("skyguard launch: error: ")
    assert expected in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize(("argv", "expected"), BAD_INPUT, ids=[e for _, e in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], expected: str) -> None:
    result = run_launch("--skip-git-check", *argv, env={"SKYGUARD_E2E_MISSING_SECRET": ""})
    _assert_one_line_error(result, expected, EXIT_CONFIG_ERROR)


def test_bad_input_is_reported_before_skypilot_is_imported() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "devops.skypilot",
            "launch",
            "--name",
            "9x",
            "--",
            "true",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == EXIT_CONFIG_ERROR
    imported = re.findall(r"\|\s+(\S+)$", result.stderr, flags=re.MULTILINE)
    assert "devops.skypilot.client.launch.request" in imported
    assert not [name for name in imported if name == "sky" or name.startswith("sky.")]


def test_help_does_not_import_skypilot() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "devops.skypilot", "launch", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "--heartbeat-timeout" in result.stdout
    imported = re.findall(r"\|\s+(\S+)$", result.stderr, flags=re.MULTILINE)
    assert imported, "no -X importtime output"
    assert not [name for name in imported if name == "sky" or name.startswith("sky.")]


def test_recipe_that_skypilot_rejects_is_one_line(tmp_path: Path) -> None:
    recipe = yaml.safe_load((REPO / "recipes" / "job.yaml").read_text())
    recipe["resources"]["job_recovery"]["recover_on_exit_codes"] = [75, 300]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = run_launch("--dry-run", "--skip-git-check", "--recipe", str(path), "--", "true")
    _assert_one_line_error(result, "SkyPilot rejects the task", EXIT_CONFIG_ERROR)
    path.write_text("name: [unclosed\n")
    result = run_launch("--dry-run", "--skip-git-check", "--recipe", str(path), "--", "true")
    _assert_one_line_error(result, "is not valid YAML", EXIT_CONFIG_ERROR)


def test_unreachable_skypilot_is_one_line_and_exit_1() -> None:
    """A SkyPilot failure at submission (here: its API server cannot be reached)."""
    result = run_launch(
        "--skip-git-check",
        *STATE,
        "--",
        "true",
        env={"SKYPILOT_API_SERVER_ENDPOINT": "http://127.0.0.1:9"},
    )
    _assert_one_line_error(result, "Could not connect to SkyPilot API server", 1)


def test_confirm_without_yes_submits_nothing() -> None:
    result = run_launch(
        "--confirm",
        "--skip-git-check",
        *STATE,
        "--",
        "true",
        stdin="n\n",
        env={"SKYPILOT_API_SERVER_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert result.returncode == 1
    assert "not launched" in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------- git checks (real repos)


def git(cwd: Path, *argv: str) -> str:
    result = subprocess.run(
        ["git", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
        },
    )
    return result.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A project with the recipes, committed and pushed to a bare 'origin'."""
    origin = tmp_path / "origin.git"
    work = tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", str(origin))
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    shutil.copytree(REPO / "recipes", work / "recipes")
    (work / "train.py").write_text("print('hi')\n")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "init")
    git(work, "remote", "add", "origin", str(origin))
    git(work, "push", "-q", "origin", "main")
    return work


def test_clean_pushed_tree_launches_its_commit(repo: Path) -> None:
    (config,) = dry_run(*STATE, "--", "python", "train.py", cwd=repo)
    assert config["envs"]["SKYGUARD_GIT_COMMIT"] == git(repo, "rev-parse", "HEAD")
    assert Path(config["workdir"]) == repo.resolve()


def test_dirty_tree_is_refused(repo: Path) -> None:
    (repo / "train.py").write_text("print('changed')\n")
    result = run_launch("--dry-run", *STATE, "--", "python", "train.py", cwd=repo)
    _assert_one_line_error(result, "uncommitted changes", EXIT_CONFIG_ERROR)
    assert "train.py" in result.stderr
    (config,) = dry_run("--skip-git-check", *STATE, "--", "true", cwd=repo)
    assert config["name"]


def test_unpushed_commit_is_refused(repo: Path) -> None:
    (repo / "train.py").write_text("print('changed')\n")
    git(repo, "commit", "-q", "-am", "local only")
    result = run_launch("--dry-run", *STATE, "--", "python", "train.py", cwd=repo)
    _assert_one_line_error(result, "is not on any remote branch", EXIT_CONFIG_ERROR)


def test_git_ref_other_than_head_is_fetched_by_the_nodes(repo: Path) -> None:
    first = git(repo, "rev-parse", "HEAD")
    (repo / "train.py").write_text("print('v2')\n")
    git(repo, "commit", "-q", "-am", "v2")
    git(repo, "push", "-q", "origin", "main")
    (config,) = dry_run("--git-ref", first, *STATE, "--", "true", cwd=repo)
    assert config["workdir"] == {"url": git(repo, "remote", "get-url", "origin"), "ref": first}
    assert config["envs"]["SKYGUARD_GIT_COMMIT"] == first
    assert_valid_skypilot_task(config)
    result = run_launch("--dry-run", "--git-ref", "no-such-ref", *STATE, "--", "true", cwd=repo)
    _assert_one_line_error(result, "--git-ref no-such-ref: not a commit", EXIT_CONFIG_ERROR)


def test_outside_a_git_repo_needs_skip_git_check(tmp_path: Path) -> None:
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    result = run_launch("--dry-run", *STATE, "--", "true", cwd=tmp_path)
    _assert_one_line_error(result, "is not a git repository", EXIT_CONFIG_ERROR)
    (config,) = dry_run("--skip-git-check", *STATE, "--", "true", cwd=tmp_path)
    assert "SKYGUARD_GIT_COMMIT" not in config["envs"]

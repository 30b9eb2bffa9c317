"""Configuration: durations, precedence flags > env > file > defaults, bad input."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from devops.skypilot.common.values import ConfigError, parse_count, parse_duration, parse_rate
from devops.skypilot.node.config import OPTIONS, add_run_arguments, build_config


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1.5h", 5400),
        ("1d", 86400),
        (" 3s ", 3),
        (0, 0),
        (2.5, 2.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "text",
    [
        "-5",
        "5x",
        "",
        "s",
        "1h30m",
        "abc",
        -1,
        True,
        "nan",
        "inf",
        NAN,
        INF,
        -INF,
        1e300,
        "9999999d",
    ],
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


@pytest.mark.parametrize("value", [NAN, INF, 2.5, True, "nan", "1e400", "x"])
def test_bad_counts(value: object) -> None:
    with pytest.raises(ConfigError, match="not a whole number"):
        parse_count(value)  # type: ignore[arg-type]


def test_a_whole_toml_float_is_a_count() -> None:
    assert parse_count(3.0) == 3 and parse_count("3") == 3


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", NAN, INF, True, "fast"])
def test_bad_rates(value: object) -> None:
    with pytest.raises(ConfigError, match="not a"):
        parse_rate(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("grace = nan", "[run] grace: not a finite number: nan"),
        ("heartbeat_timeout = inf", "[run] heartbeat_timeout: not a finite number: inf"),
        ("max_runtime = -inf", "[run] max_runtime: not a finite number"),
        ("preflight_min_busbw = nan", "[run] preflight_min_busbw: not a finite number"),
        ("max_retries = inf", "[run] max_retries: not a whole number"),
        ("master_port = nan", "[run] master_port: not a whole number"),
    ],
)
def test_non_finite_numbers_in_the_file_are_config_errors(
    tmp_path: Path, toml: str, message: str
) -> None:
    config_file = tmp_path / "run.toml"
    config_file.write_text(f"[run]\n{toml}\n")
    with pytest.raises(ConfigError) as error:
        parse(["--config", str(config_file), "--", "true"])
    assert message in str(error.value)


def parse(argv: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return build_config(parser.parse_args(argv), env or {})


TASK_ID = "sky-managed-2026-11-23-00-14-53-926267_train_3-0"
#: The same job after its jobs controller restarted: a new timestamp, the same job id.
TASK_ID_RESTARTED = "sky-managed-2026-11-23-04-02-11-000817_train_3-0"


def test_defaults_and_task_id(tmp_path: Path) -> None:
    config = parse(["--", "true"], {"SKYPILOT_TASK_ID": TASK_ID})
    assert config.command == ("true",)
    assert config.grace == 30 and config.max_retries == 3 and config.heartbeat_timeout == 0
    assert config.state_dir == Path.home() / ".skyguard" / "train_3-0"
    assert config.heartbeat_file == config.state_dir / "heartbeat"
    assert config.task_id == "train_3-0"
    fresh = parse(["--", "true"])
    assert fresh.task_id.startswith("local-") and fresh.task_id != parse(["--", "true"]).task_id


@pytest.mark.parametrize(
    ("env", "key"),
    [
        # skyguard launch stamps the key: it wins over everything SkyPilot sets.
        ({"SKYGUARD_RUN_KEY": "exp-1-0a1b2c3d", "SKYPILOT_TASK_ID": TASK_ID}, "exp-1-0a1b2c3d"),
        # plain `sky jobs launch`: the task id without the controller's timestamp.
        ({"SKYPILOT_TASK_ID": TASK_ID, "SKYPILOT_MANAGED_JOB_ID": "3"}, "train_3-0"),
        ({"SKYPILOT_TASK_ID": TASK_ID_RESTARTED, "SKYPILOT_MANAGED_JOB_ID": "3"}, "train_3-0"),
        # a relaunch under the same name is another managed job: another key.
        (
            {"SKYPILOT_TASK_ID": TASK_ID.replace("_3-0", "_4-0"), "SKYPILOT_MANAGED_JOB_ID": "4"},
            "train_4-0",
        ),
        # names with underscores keep them; the job id is the last `_<id>-<task>`.
        (
            {
                "SKYPILOT_TASK_ID": TASK_ID.replace("_train_", "_my_run_"),
                "SKYPILOT_MANAGED_JOB_ID": "3",
            },
            "my_run_3-0",
        ),
        # a plain `sky launch` (never recovered) and unknown forms: the id as it is.
        (
            {"SKYPILOT_TASK_ID": "sky-2026-11-23-00-08-32-275891_dev_2"},
            "sky-2026-11-23-00-08-32-275891_dev_2",
        ),
        ({"SKYPILOT_TASK_ID": TASK_ID, "SKYPILOT_MANAGED_JOB_ID": "9"}, TASK_ID),
        ({"SKYPILOT_TASK_ID": "odd id/with slash"}, "odd_id_with_slash"),
    ],
)
def test_run_key_survives_a_controller_restart_and_differs_between_launches(
    env: dict[str, str], key: str
) -> None:
    config = parse(["--", "true"], env)
    assert config.task_id == key
    assert config.state_dir.name == key


@pytest.mark.parametrize("key", ["../escape", "a/b", ".hidden", "x" * 201, "sp ace"])
def test_a_bad_stamped_run_key_is_one_config_error(key: str) -> None:
    with pytest.raises(ConfigError, match="SKYGUARD_RUN_KEY"):
        parse(["--", "true"], {"SKYGUARD_RUN_KEY": key})


def test_state_root_holds_one_dir_per_run_key_and_node(tmp_path: Path) -> None:
    env = {
        "SKYGUARD_STATE_ROOT": str(tmp_path),
        "SKYPILOT_TASK_ID": TASK_ID,
        "SKYPILOT_MANAGED_JOB_ID": "3",
        "SKYPILOT_NODE_RANK": "1",
        "SKYPILOT_NUM_NODES": "2",
    }
    assert parse(["--", "true"], env).state_dir == tmp_path / "train_3-0" / "node-1"
    single = {**env, "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NUM_NODES": "1"}
    assert parse(["--", "true"], single).state_dir == tmp_path / "train_3-0" / "node-0"
    # An explicit state dir is used as given.
    explicit = parse(["--state-dir", str(tmp_path / "mine"), "--", "true"], env)
    assert explicit.state_dir == tmp_path / "mine"


def test_flags_beat_env_beat_file(tmp_path: Path) -> None:
    config_file = tmp_path / "skyguard.toml"
    config_file.write_text('[run]\ngrace = "7s"\nmax_retries = 9\nheartbeat_timeout = "1m"\n')
    env = {"SKYGUARD_CONFIG": str(config_file), "SKYGUARD_GRACE": "5", "SKYGUARD_MAX_RETRIES": "4"}
    config = parse(["--grace", "3", "--", "true"], env)
    assert config.grace == 3  # flag
    assert config.max_retries == 4  # env
    assert config.heartbeat_timeout == 60  # file


def test_skypilot_env_gives_rank_and_job_name() -> None:
    env = {
        "SKYPILOT_NODE_RANK": "1",
        "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_CLUSTER_INFO": '{"cluster_name": "train-7", "cloud": "Slurm"}',
        "SKYPILOT_MANAGED_JOB_ID": "7",
    }
    config = parse(["--", "true"], env)
    assert (config.node_rank, config.num_nodes, config.job_name) == (1, 2, "train-7")
    assert config.managed


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--"], {}, "no command given"),
        ([], {}, "no command given"),
        (["--grace", "-1", "--", "true"], {}, "--grace: duration must not be negative"),
        (
            ["--", "true"],
            {"SKYGUARD_HEARTBEAT_TIMEOUT": "soon"},
            "SKYGUARD_HEARTBEAT_TIMEOUT: not a duration",
        ),
        (["--max-retries", "x", "--", "true"], {}, "--max-retries: not a whole number"),
        (["--preflight-min-busbw", "nan", "--", "true"], {}, "not a finite number: 'nan'"),
        (["--", "true"], {"SKYGUARD_PREFLIGHT_MIN_BUSBW": "inf"}, "not a finite number: 'inf'"),
        (["--", "true"], {"SKYGUARD_GRACE": "nan"}, "SKYGUARD_GRACE: not a duration: 'nan'"),
        (["--", "definitely-not-a-command-xyz"], {}, "command not found on PATH"),
        (["--", "/nonexistent/train"], {}, "command not found: /nonexistent/train"),
        (["--startup-grace", "5", "--", "true"], {}, "--startup-grace needs --heartbeat-timeout"),
        (
            ["--", "true"],
            {"SKYPILOT_NODE_RANK": "2", "SKYPILOT_NUM_NODES": "2"},
            "SKYPILOT_NODE_RANK=2",
        ),
        (["--", "true"], {"SKYPILOT_NODE_RANK": "a"}, "SKYPILOT_NODE_RANK: not a whole number"),
        (["--config", "/nonexistent.toml", "--", "true"], {}, "cannot read config file"),
    ],
)
def test_bad_input_is_one_clear_error(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse(argv, env)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse(["--config", str(bad), "--", "true"])
    bad.write_text("[run]\nheartbeat = 5\n")
    with pytest.raises(ConfigError, match="unknown \\[run\\] key 'heartbeat'"):
        parse(["--config", str(bad), "--", "true"])


def test_every_option_has_flag_env_and_help() -> None:
    for option in OPTIONS:
        assert option.flag.startswith("--") and option.env_var.startswith("SKYGUARD_")
        assert option.help

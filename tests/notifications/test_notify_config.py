"""NotificationConfig: the [notifications] table, env overrides and one-line errors."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from notifications.channels.discord import DiscordNotifier
from notifications.channels.github import GitHubNotifier
from notifications.channels.wandb import WandbNotifier
from notifications.config import ConfigError, NotificationConfig
from notifications.config_keys import KEYS

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

GUIDE = (Path(__file__).resolve().parents[2] / "docs" / "notifications.md").read_text()

WEBHOOK = "https://discord.com/api/webhooks/1234567890/" + "T" * 68
TOKEN = "ghp_" + "Q" * 36


def build(section: dict[str, Any] | None = None, **env: str) -> NotificationConfig:
    return NotificationConfig.from_sources(section, env)


def test_defaults() -> None:
    config = build()
    assert config.enabled and config.channels == {"discord", "slack", "github", "wandb"}
    assert config.deadline == 20.0 and config.retry.tries == 3
    assert config.github.api_url == "https://api.github.com"
    assert [n.name for n in config.notifiers()] == ["discord", "slack", "github", "wandb"]
    assert not any(n.enabled for n in config.notifiers() if n.name != "wandb")


def test_file_values_are_read() -> None:
    config = build(
        {
            "channels": ["discord", "github"],
            "deadline": "45s",
            "tries": 5,
            "connect_timeout": 2,
            "read_timeout": "1m",
            "dashboard_url": "https://sky.example/dashboard/jobs/{job_id}",
            "discord_username": "trainer-bot",
            "github_repo": "octo/trainer",
            "github_api_url": "https://ghe.corp/api/v3",
            "github_context": "ci/skyguard",
            "wandb_alerts": False,
        }
    )
    assert config.channels == {"discord", "github"}
    assert config.deadline == 45.0 and config.retry.tries == 5
    assert config.discord.timeouts.connect == 2.0 and config.github.timeouts.read == 60.0
    assert config.discord.username == "trainer-bot"
    assert config.github.repo == "octo/trainer" and config.github.context == "ci/skyguard"
    assert config.github.api_url == "https://ghe.corp/api/v3"
    assert config.wandb.alerts is False
    assert [type(n) for n in config.notifiers()] == [DiscordNotifier, GitHubNotifier]


def test_environment_wins_over_the_file() -> None:
    config = build(
        {"deadline": "45s", "github_repo": "octo/trainer"},
        SKYGUARD_NOTIFY_DEADLINE="5",
        SKYGUARD_GITHUB_REPO="octo/other",
    )
    assert config.deadline == 5.0 and config.github.repo == "octo/other"


def test_every_key_has_an_env_variable() -> None:
    for name, key in KEYS.items():
        assert key.env and key.env[0].startswith("SKYGUARD_"), name


def test_credentials_and_links_come_from_the_environment() -> None:
    config = build(
        {"github_repo": "octo/trainer", "dashboard_url": "https://sky.example/jobs/{job_id}"},
        SKYGUARD_DISCORD_WEBHOOK_URL=WEBHOOK,
        SKYGUARD_SLACK_WEBHOOK_URL="https://hooks.slack.com/services/T0/B0/slacktoken012345",
        GITHUB_TOKEN=TOKEN,
        GITHUB_SHA="ABCDEF0123456",
        SKYPILOT_MANAGED_JOB_ID="42",
        WANDB_RUN_ID="run1",
        WANDB_PROJECT="proj",
        WANDB_ENTITY="team",
    )
    assert all(n.enabled for n in config.notifiers())
    links = config.links("train-7b", "task-1")
    assert links.log_command == "sky jobs logs 42"
    assert links.dashboard_url == "https://sky.example/jobs/42"
    assert links.wandb_url == "https://wandb.ai/team/proj/runs/run1"
    assert links.git_commit == "abcdef0123456"


def test_skyguard_token_wins_and_a_plain_cluster_gets_sky_logs() -> None:
    config = build(
        SKYGUARD_GITHUB_TOKEN="ghp_a" * 3,
        GITHUB_TOKEN="ghp_b" * 3,
        SKYPILOT_CLUSTER_INFO=json.dumps({"cluster_name": "dev-box", "cloud": "AWS"}),
    )
    assert config.github.token is not None and config.github.token.reveal() == "ghp_a" * 3
    assert config.links("j", "t").log_command == "sky logs dev-box"


def test_disabled_builds_no_notifiers() -> None:
    assert build({"enabled": False}).notifiers() == []
    assert build(SKYGUARD_NOTIFY_ENABLED="off").notifiers() == []


@pytest.mark.parametrize(
    ("section", "env", "message"),
    [
        ({"deadline": "soon"}, {}, "notifications.deadline: expected a duration"),
        ({}, {"SKYGUARD_NOTIFY_DEADLINE": "-3"}, "SKYGUARD_NOTIFY_DEADLINE: expected a duration"),
        ({"deadline": 0}, {}, "notifications.deadline: must be more than 0"),
        ({"deadline": float("nan")}, {}, "notifications.deadline: expected a finite duration"),
        ({"read_timeout": float("inf")}, {}, "read_timeout: expected a finite duration"),
        ({"tries": 0}, {}, "notifications.tries: expected a whole number"),
        ({"channels": ["discord", "teams"]}, {}, "unknown channel teams"),
        ({"enabled": "maybe"}, {}, "notifications.enabled: expected true or false"),
        ({"github_repo": "no-slash"}, {}, "notifications.github_repo: expected owner/name"),
        ({"github_api_url": "api.github.com"}, {}, "expected an http(s) URL"),
        ({"dashboard_url": "https://x/{run}"}, {}, "bad placeholder"),
        ({"colour": "red"}, {}, "notifications.colour: unknown key"),
        ({}, {"SKYGUARD_GIT_COMMIT": "main"}, "SKYGUARD_GIT_COMMIT: expected a hex commit id"),
        ({}, {"WANDB_MODE": "sometimes"}, "WANDB_MODE: expected one of"),
        ({"discord_username": "Discord Bot"}, {}, "Discord refuses the name"),
    ],
)
def test_bad_values_are_one_clear_line(
    section: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        NotificationConfig.from_sources(section, env)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("key", ["discord_webhook_url", "webhook_url", "github_token", "token"])
def test_secrets_in_the_file_are_refused(key: str) -> None:
    with pytest.raises(ConfigError) as error:
        build({key: WEBHOOK})
    assert "is a secret" in str(error.value) and WEBHOOK not in str(error.value)


def test_a_bad_webhook_url_is_reported_without_quoting_it() -> None:
    secret = "ftp://discord.com/api/webhooks/1/" + "S" * 68
    with pytest.raises(ConfigError) as error:
        build(SKYGUARD_DISCORD_WEBHOOK_URL=secret)
    assert "SKYGUARD_DISCORD_WEBHOOK_URL" in str(error.value)
    assert "S" * 20 not in str(error.value)


def test_repr_and_describe_never_show_secrets() -> None:
    config = build(SKYGUARD_DISCORD_WEBHOOK_URL=WEBHOOK, GITHUB_TOKEN=TOKEN, WANDB_API_KEY="k" * 40)
    for text in (repr(config), str(config), json.dumps(config.describe())):
        assert WEBHOOK not in text and "T" * 20 not in text
        assert TOKEN not in text and "k" * 40 not in text
    described = config.describe()
    assert described["discord"]["webhook_url"] == "***"
    assert described["github"]["token"] == "***"
    assert build().describe()["github"]["token"] is None


def test_wandb_is_built_from_its_own_variables(tmp_path: Any) -> None:
    config = build(WANDB_RUN_ID="r1", WANDB_MODE="offline", WANDB_DIR=str(tmp_path))
    wandb = config.notifiers()[-1]
    assert isinstance(wandb, WandbNotifier)
    assert wandb.settings.offline and wandb.settings.directory == tmp_path


def test_the_guides_toml_example_is_valid() -> None:
    (block,) = re.findall(r"```toml\n(.*?)```", GUIDE, re.S)
    text = "\n".join(line.strip() for line in block.splitlines())
    section = tomllib.loads(text)["notifications"]
    config = NotificationConfig.from_sources(section, {})
    assert config.github.repo == "my-org/my-trainer" and config.deadline == 20.0
    assert set(section) <= set(KEYS)


def test_the_guide_documents_every_key_and_variable() -> None:
    for name, key in KEYS.items():
        assert f"`{name}`" in GUIDE, name
        for variable in key.env:
            assert variable in GUIDE, variable

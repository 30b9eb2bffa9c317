"""``skyguard notify --test``: one line per channel, exit 2 with one line on bad config."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from notifications import cli
from tests.notifications import slack_fake
from tests.notifications.notify_fakes import (
    LoopbackServer,
    Reply,
    discord_ok,
    github_validator,
    webhook_url,
)

Serve = Callable[..., LoopbackServer]
SHA = "0123456789abcdef0123456789abcdef01234567"
ROOT = Path(__file__).resolve().parents[2]
SKYGUARD_ENV = (
    "SKYGUARD_DISCORD_WEBHOOK_URL",
    "SKYGUARD_SLACK_WEBHOOK_URL",
    "GITHUB_TOKEN",
    "SKYGUARD_GITHUB_TOKEN",
    "SKYGUARD_GITHUB_REPO",
    "GITHUB_REPOSITORY",
    "SKYGUARD_CONFIG",
    "WANDB_RUN_ID",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SKYGUARD_ENV:
        monkeypatch.delenv(name, raising=False)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="skyguard notify")
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(list(argv)))


def test_sends_a_test_event_and_reports_each_channel(
    serve: Serve,
    webhook_token: str,
    github_token: str,
    slack_token: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    chat = serve([discord_ok])
    slack = serve([slack_fake.OK], slack_fake.slack_validator(slack_token))
    status = serve([Reply(201, {"id": 1})], github_validator(github_token))
    config = tmp_path / "skyguard.toml"
    config.write_text(
        '[notifications]\ngithub_repo = "octo/trainer"\n'
        f'github_api_url = "{status.url}"\ndeadline = "5s"\n'
    )
    monkeypatch.setenv("SKYGUARD_DISCORD_WEBHOOK_URL", webhook_url(chat, webhook_token))
    monkeypatch.setenv("SKYGUARD_SLACK_WEBHOOK_URL", slack_fake.webhook_url(slack, slack_token))
    monkeypatch.setenv("GITHUB_TOKEN", github_token)
    monkeypatch.setenv("SKYGUARD_GIT_COMMIT", SHA)
    assert run("--test", "--config", str(config), "--job-name", "llm") == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert re.fullmatch(r"discord: sent: message \d+", lines[0]), lines[0]
    assert lines[1] == "slack: sent: HTTP 200 ok"
    assert lines[2] == f"github: sent: success on {SHA[:12]} (skyguard/llm/test)"
    assert lines[3].startswith("wandb: skipped: ")
    assert len(lines) == 4 and err == ""
    assert "[test]" in chat.requests[0].json["embeds"][0]["title"]
    assert "[test]" in slack.requests[0].json["blocks"][0]["text"]["text"]


def test_a_failing_channel_exits_1(
    serve: Serve,
    webhook_token: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    chat = serve([Reply(404, {"message": "Unknown Webhook", "code": 10015})])
    monkeypatch.setenv("SKYGUARD_DISCORD_WEBHOOK_URL", webhook_url(chat, webhook_token))
    assert run("--test") == 1
    out = capsys.readouterr().out
    assert "discord: failed: HTTP 404: Unknown Webhook" in out
    assert "github: skipped: no token" in out


def test_channels_left_out_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[notifications]\nchannels = ["github"]\n')
    monkeypatch.setenv("SKYGUARD_CONFIG", str(config))
    assert run("--test") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "discord: skipped: not in channels"
    assert out[1] == "slack: skipped: not in channels"
    assert out[2].startswith("github: skipped: no token")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[notifications]\ndeadline = "soon"\n', "notifications.deadline: expected a duration"),
        ("[notifications\n", "is not valid TOML"),
        ('[notifications]\ngithub_token = "ghp_x"\n', "notifications.github_token is a secret"),
        ('notifications = "on"\n', "[notifications] must be a table"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    assert run("--test", "--config", str(config)) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and message in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--test", "--config", str(tmp_path / "nope.toml")) == 2
    assert "cannot read" in capsys.readouterr().err


def test_without_test_there_is_nothing_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert run() == 2
    assert "use --test" in capsys.readouterr().err


def test_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[notifications]\ntries = 0\n")
    script = (
        "import argparse, sys\n"
        "from notifications import cli\n"
        "p = argparse.ArgumentParser()\n"
        "cli.add_arguments(p)\n"
        "sys.exit(cli.main(p.parse_args()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in SKYGUARD_ENV}
    done = subprocess.run(
        [sys.executable, "-c", script, "--test", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().endswith("notifications.tries: expected a whole number >= 1, got 0")
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1

"""No webhook URL or token in any log (even DEBUG), output, exception, record or repr."""

from __future__ import annotations

import argparse
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from devops.skypilot.common.termination import Termination, TerminationReason
from notifications import cli
from notifications.channels.discord import DiscordNotifier, DiscordSettings
from notifications.channels.github import GitHubNotifier, GitHubSettings
from notifications.http import HttpTimeouts
from notifications.notifier import Delivery, Event, Links
from notifications.observer import NotificationObserver
from notifications.orchestrator import Orchestrator, RetrySettings
from notifications.secrets import Secret
from tests.notifications.notify_fakes import (
    LoopbackServer,
    RecordedSleep,
    Reply,
    discord_ok,
    github_validator,
    job_context,
    make_event,
    webhook_url,
)

Serve = Callable[..., LoopbackServer]
SHA = "0123456789abcdef0123456789abcdef01234567"


def assert_nowhere(secrets: list[str], *texts: str, files_under: Path | None = None) -> None:
    everything = list(texts)
    if files_under is not None:
        everything += [p.read_text(errors="replace") for p in files_under.rglob("*") if p.is_file()]
    for secret in secrets:
        for text in everything:
            assert secret not in text


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_failures_of_every_kind_leak_nothing(
    serve: Serve,
    webhook_token: str,
    github_token: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    servers = [
        serve([Reply(500, {"message": "boom"})]),
        serve([Reply(401, {"message": "Invalid Webhook Token", "code": 50027})]),
        serve([Reply(429, {"retry_after": 0.01, "global": False}), discord_ok]),
        serve([discord_ok]),
        serve([Reply(hang=True)]),
    ]
    urls = [webhook_url(server, webhook_token) for server in servers]
    urls.append(f"http://127.0.0.1:{closed_port()}/api/webhooks/1/{webhook_token}")
    deliveries: list[Delivery] = []
    for index, url in enumerate(urls):
        notifier = DiscordNotifier(DiscordSettings(Secret(url), timeouts=HttpTimeouts(1.0, 1.0)))
        orchestrator = Orchestrator([notifier], deadline=1.0, sleep=RecordedSleep())
        deliveries += orchestrator.notify(make_event(), state_dir=tmp_path / f"state{index}")
    github_server = serve([Reply(201, {"id": 1})], github_validator("ghp_other"))
    github = GitHubNotifier(GitHubSettings(Secret(github_token), "octo/trainer", github_server.url))
    deliveries += Orchestrator([github]).notify(
        make_event(links=Links(git_commit=SHA)), state_dir=tmp_path / "gh"
    )
    statuses = [d.status.value for d in deliveries]
    assert statuses.count("sent") == 2 and statuses.count("failed") == 5
    assert any("POST" in r.getMessage() for r in caplog.records)  # urllib3 did log requests
    out, err = capsys.readouterr()
    assert_nowhere(
        [webhook_token, github_token, urls[0]],
        caplog.text,
        out,
        err,
        repr(deliveries),
        *(d.line() for d in deliveries),
        files_under=tmp_path,
    )


class Leaky(DiscordNotifier):
    """A channel with a bug whose exception quotes its own URL."""

    def _send(self, event: Event, deadline: float | None) -> Delivery:
        assert self.settings.webhook_url is not None
        raise RuntimeError(f"cannot post to {self.settings.webhook_url.reveal()}")


def test_an_exception_quoting_the_secret_is_scrubbed(
    webhook_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"https://discord.com/api/webhooks/1/{webhook_token}"
    (delivery,) = Orchestrator([Leaky(DiscordSettings(Secret(url)))]).deliver(make_event())
    assert delivery.status.value == "failed"
    assert "RuntimeError: cannot post to ***" in delivery.detail
    assert_nowhere([webhook_token], delivery.detail, caplog.text)


def test_the_test_command_prints_no_secret(
    serve: Serve,
    webhook_token: str,
    github_token: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = serve([Reply(500)])
    monkeypatch.setenv("SKYGUARD_DISCORD_WEBHOOK_URL", webhook_url(server, webhook_token))
    monkeypatch.setenv("GITHUB_TOKEN", github_token)
    monkeypatch.setenv("SKYGUARD_GITHUB_REPO", "octo/trainer")
    monkeypatch.setenv("SKYGUARD_GITHUB_API_URL", server.url)
    monkeypatch.setenv("SKYGUARD_GIT_COMMIT", SHA)
    monkeypatch.setenv("SKYGUARD_NOTIFY_DEADLINE", "2")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args(["--test"])) == 1
    out, err = capsys.readouterr()
    assert "discord: failed: HTTP 500" in out
    assert_nowhere([webhook_token, github_token], out, err, caplog.text)


def test_the_observer_leaks_nothing_into_logs_or_the_state_dir(
    serve: Serve,
    webhook_token: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = serve([Reply(503)])
    env = {
        "SKYGUARD_DISCORD_WEBHOOK_URL": webhook_url(server, webhook_token),
        "SKYGUARD_NOTIFY_DEADLINE": "1",
    }
    observer = NotificationObserver.from_sources({"tries": 2}, env)
    ctx = job_context(tmp_path)
    observer.on_end(
        ctx,
        Termination(
            reason=TerminationReason.JOB_FAILED,
            exit_code=1,
            child_exit_code=1,
            signal=None,
            detail=f"printed {webhook_token} to the log",
            monitor="",
            attempt=1,
            started_at="",
            ended_at="",
            duration=5.0,
            node_rank=0,
            task_id=ctx.task_id,
        ),
    )
    statuses = {d.channel: d.status.value for d in observer.last_deliveries}
    assert statuses == {
        "discord": "failed",
        "slack": "skipped",
        "github": "skipped",
        "wandb": "skipped",
    }
    assert_nowhere(
        [webhook_token],
        caplog.text,
        repr(observer.config),
        repr(observer.last_deliveries),
        *(r.body.decode() for r in server.requests),
        files_under=tmp_path,
    )
    assert RetrySettings(tries=2) == observer.config.retry

"""NotificationObserver: what the runner's start and end turn into, and that it never hurts."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devops.skypilot.common.lifecycle import Phase, RunObserver
from devops.skypilot.common.termination import (
    EXIT_RETRY,
    Announcer,
    Termination,
    TerminationReason,
    exit_code_for,
)
from notifications.channels.discord import PHASE_COLOURS
from notifications.config import NotificationConfig
from notifications.notifier import Delivery, Event, Notifier
from notifications.observer import NotificationObserver
from notifications.orchestrator import Orchestrator
from tests.notifications.notify_fakes import (
    LoopbackServer,
    Reply,
    discord_ok,
    github_validator,
    job_context,
    webhook_url,
)

Serve = Callable[..., LoopbackServer]
SHA = "0123456789abcdef0123456789abcdef01234567"


def end(reason: TerminationReason, detail: str = "", duration: float = 90.0) -> Termination:
    return Termination(
        reason=reason,
        exit_code=exit_code_for(reason, 3),
        child_exit_code=3,
        signal="SIGTERM" if reason is TerminationReason.SIGNALLED else None,
        detail=detail,
        monitor="",
        attempt=1,
        started_at="2026-01-01T00:00:00+00:00",
        ended_at="2026-01-01T00:01:30+00:00",
        duration=duration,
        node_rank=0,
        task_id="sky-managed-2026_train-7b_42-0",
    )


@pytest.fixture
def channels(
    serve: Serve, webhook_token: str, github_token: str
) -> tuple[LoopbackServer, LoopbackServer, dict[str, str]]:
    chat = serve([discord_ok])
    status = serve([Reply(201, {"id": 1})], github_validator(github_token))
    env = {
        "SKYGUARD_DISCORD_WEBHOOK_URL": webhook_url(chat, webhook_token),
        "GITHUB_TOKEN": github_token,
        "SKYGUARD_GITHUB_REPO": "octo/trainer",
        "SKYGUARD_GITHUB_API_URL": status.url,
        "SKYGUARD_GIT_COMMIT": SHA,
        "SKYPILOT_MANAGED_JOB_ID": "42",
        "WANDB_RUN_ID": "r1",
        "WANDB_PROJECT": "proj",
        "WANDB_ENTITY": "team",
        "WANDB_MODE": "disabled",
    }
    return chat, status, env


def test_it_is_a_run_observer() -> None:
    assert issubclass(NotificationObserver, RunObserver)


def test_start_sets_the_commit_pending_and_leaves_the_chat_alone(
    channels: tuple[LoopbackServer, LoopbackServer, dict[str, str]], tmp_path: Path
) -> None:
    chat, status, env = channels
    observer = NotificationObserver.from_sources(None, env)
    observer.on_start(job_context(tmp_path))
    observer.wait_started(30)
    assert [d.line() for d in observer.last_deliveries] == [
        f"github: sent: pending on {SHA[:12]} (skyguard/train-7b)"
    ]
    assert chat.requests == []
    body = status.requests[0].json
    assert body["state"] == "pending" and body["context"] == "skyguard/train-7b"
    assert body["target_url"] == "https://wandb.ai/team/proj/runs/r1"


@pytest.mark.parametrize(
    ("reason", "phase", "state"),
    [
        (TerminationReason.COMPLETED, Phase.SUCCEEDED, "success"),
        (TerminationReason.JOB_FAILED, Phase.FAILED, "failure"),
        (TerminationReason.HEARTBEAT_TIMEOUT, Phase.RETRYING, "pending"),
        (TerminationReason.SIGNALLED, Phase.CANCELLED, "error"),
        (TerminationReason.CRASH_LOOP, Phase.FAILED, "failure"),
    ],
)
def test_end_announces_the_phase_with_links(
    channels: tuple[LoopbackServer, LoopbackServer, dict[str, str]],
    tmp_path: Path,
    reason: TerminationReason,
    phase: Phase,
    state: str,
) -> None:
    chat, status, env = channels
    observer = NotificationObserver.from_sources(None, env)
    observer.on_end(job_context(tmp_path), end(reason, detail="**why** it ended"))
    assert status.requests[0].json["state"] == state
    message = chat.requests[0].json
    (embed,) = message["embeds"]
    assert embed["color"] == PHASE_COLOURS[phase]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Reason"] == f"`{reason.value}`"
    assert fields["Logs"] == "`sky jobs logs 42`"
    assert fields["Runtime"] == "1m 30s"
    assert fields["Nodes"] == "2"
    assert fields["W&B run"] == "https://wandb.ai/team/proj/runs/r1"
    assert embed["description"] == "\\*\\*why\\*\\* it ended"
    assert message["allowed_mentions"] == {"parse": []}


def test_a_retry_is_a_retry_not_a_failure(
    channels: tuple[LoopbackServer, LoopbackServer, dict[str, str]], tmp_path: Path
) -> None:
    chat, _, env = channels
    termination = end(TerminationReason.NCCL_ERROR)
    assert termination.exit_code == EXIT_RETRY
    NotificationObserver.from_sources(None, env).on_end(job_context(tmp_path), termination)
    assert "retrying" in chat.requests[0].json["embeds"][0]["title"]


def test_a_restarted_runner_does_not_repeat_itself(
    channels: tuple[LoopbackServer, LoopbackServer, dict[str, str]], tmp_path: Path
) -> None:
    chat, status, env = channels
    termination = end(TerminationReason.JOB_FAILED)
    NotificationObserver.from_sources(None, env).on_end(job_context(tmp_path), termination)
    restarted = NotificationObserver.from_sources(None, env)
    restarted.on_end(job_context(tmp_path, attempt=2), termination)
    assert len(chat.requests) == 1 and len(status.requests) == 1
    assert {d.status.value for d in restarted.last_deliveries} == {"skipped"}


def test_other_nodes_stay_quiet(
    channels: tuple[LoopbackServer, LoopbackServer, dict[str, str]], tmp_path: Path
) -> None:
    chat, status, env = channels
    observer = NotificationObserver.from_sources(None, env)
    observer.on_start(job_context(tmp_path, node_rank=1))
    observer.on_end(job_context(tmp_path, node_rank=1), end(TerminationReason.JOB_FAILED))
    assert chat.requests == [] and status.requests == []


def test_dead_endpoints_cost_about_the_deadline_and_change_nothing(
    serve: Serve, webhook_token: str, github_token: str, tmp_path: Path
) -> None:
    hung = serve([Reply(hang=True)])
    env = {
        "SKYGUARD_DISCORD_WEBHOOK_URL": webhook_url(hung, webhook_token),
        "GITHUB_TOKEN": github_token,
        "SKYGUARD_GITHUB_REPO": "octo/trainer",
        "SKYGUARD_GITHUB_API_URL": hung.url,
        "SKYGUARD_GIT_COMMIT": SHA,
        "SKYGUARD_NOTIFY_DEADLINE": "1",
        "SKYGUARD_NOTIFY_READ_TIMEOUT": "60",
    }
    observer = NotificationObserver.from_sources(None, env)
    termination = end(TerminationReason.JOB_FAILED)
    before = dataclasses.asdict(termination)
    start = time.monotonic()
    result = observer.on_end(job_context(tmp_path), termination)  # type: ignore[func-returns-value]
    elapsed = time.monotonic() - start
    assert result is None
    assert dataclasses.asdict(termination) == before and termination.exit_code == 3
    assert {d.channel: d.status.value for d in observer.last_deliveries} == {
        "discord": "failed",
        "slack": "skipped",
        "github": "failed",
        "wandb": "skipped",
    }
    # 2 channels x 3 tries x 60 s unbounded; a generous guard against hanging.
    assert elapsed < 30.0


def test_it_never_raises_even_when_the_state_dir_is_unusable(
    channels: tuple[LoopbackServer, LoopbackServer, dict[str, str]], tmp_path: Path
) -> None:
    chat, _, env = channels
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    observer = NotificationObserver.from_sources(None, env)
    observer.on_start(job_context(blocker / "state"))
    observer.on_end(job_context(blocker / "state"), end(TerminationReason.JOB_FAILED))
    assert len(chat.requests) == 1


def test_disabled_notifications_send_nothing(
    channels: tuple[LoopbackServer, LoopbackServer, dict[str, str]], tmp_path: Path
) -> None:
    chat, status, env = channels
    observer = NotificationObserver.from_sources({"enabled": False}, env)
    observer.on_start(job_context(tmp_path))
    observer.on_end(job_context(tmp_path), end(TerminationReason.JOB_FAILED))
    assert chat.requests == [] and status.requests == [] and observer.last_deliveries == []


def test_a_slow_start_notification_does_not_delay_the_command(
    serve: Serve, github_token: str, tmp_path: Path
) -> None:
    status = serve([Reply(201, {"id": 1}, delay=2.0)], github_validator(github_token))
    env = {
        "GITHUB_TOKEN": github_token,
        "SKYGUARD_GITHUB_REPO": "octo/trainer",
        "SKYGUARD_GITHUB_API_URL": status.url,
        "SKYGUARD_GIT_COMMIT": SHA,
    }
    observer = NotificationObserver.from_sources(None, env)
    observer.on_start(job_context(tmp_path))
    assert observer.last_deliveries == []  # on_start returned before GitHub answered
    observer.wait_started(30)
    assert [d.status.value for d in observer.last_deliveries] == ["sent"]


def test_the_final_status_is_sent_after_the_pending_one_is_answered(
    serve: Serve, github_token: str, tmp_path: Path
) -> None:
    """Otherwise a slow "pending" could land after "failure" and stick."""
    status = serve(
        [Reply(201, {"id": 1}, delay=1.0), Reply(201, {"id": 2})], github_validator(github_token)
    )
    env = {
        "GITHUB_TOKEN": github_token,
        "SKYGUARD_GITHUB_REPO": "octo/trainer",
        "SKYGUARD_GITHUB_API_URL": status.url,
        "SKYGUARD_GIT_COMMIT": SHA,
    }
    observer = NotificationObserver.from_sources(None, env)
    observer.on_start(job_context(tmp_path))
    observer.on_end(job_context(tmp_path), end(TerminationReason.JOB_FAILED, duration=0.1))
    pending, failure = status.requests
    assert [pending.json["state"], failure.json["state"]] == ["pending", "failure"]
    assert failure.at - pending.at >= 1.0


class RunSummary(Notifier):
    """The W&B channel as the orchestrator sees it: records what it is told."""

    name = "wandb"

    def __init__(self) -> None:
        self.told: list[tuple[Phase, TerminationReason | None]] = []

    def missing(self) -> str | None:
        return None

    def _send(self, event: Event, deadline: float | None) -> Delivery:
        self.told.append((event.phase, event.reason))
        return Delivery.sent(self.name)


def test_an_end_left_to_the_controller_is_told_only_where_the_controller_cannot(
    channels: tuple[LoopbackServer, LoopbackServer, dict[str, str]], tmp_path: Path
) -> None:
    """The jobs controller announces a signal on chat and GitHub; W&B, which it does
    not serve (the run's files are on the node), still hears it from the runner."""
    chat, status, env = channels
    config = NotificationConfig.from_sources(None, env)
    run = RunSummary()
    observer = NotificationObserver(
        config, Orchestrator([*(n for n in config.notifiers() if n.name != "wandb"), run])
    )
    left = dataclasses.replace(end(TerminationReason.SIGNALLED), announced_by=Announcer.CONTROLLER)
    observer.on_end(job_context(tmp_path), left)
    assert chat.requests == [] and status.requests == []
    assert run.told == [(Phase.CANCELLED, TerminationReason.SIGNALLED)]
    assert [d.channel for d in observer.last_deliveries] == ["wandb"]

"""What Discord's webhook docs require beyond the body schema: rate-limit headers, a
deleted webhook, forum threads. ``?wait=true`` is in test_notify_discord.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from devops.skypilot.common.lifecycle import Phase
from devops.skypilot.common.termination import TerminationReason
from notifications.channels.discord import DiscordNotifier, DiscordSettings
from notifications.config import ConfigError, NotificationConfig
from notifications.http import HttpTimeouts
from notifications.notifier import DeliveryStatus, Event
from notifications.orchestrator import Orchestrator, RetrySettings
from notifications.secrets import Secret
from tests.notifications.notify_fakes import (
    LoopbackServer,
    RecordedSleep,
    Reply,
    Request,
    discord_forum_validate,
    discord_ok,
    discord_validate,
    make_event,
    webhook_url,
)

Serve = Callable[..., LoopbackServer]
THREAD = "1234567890123456789"
UNKNOWN_WEBHOOK = Reply(404, {"message": "Unknown Webhook", "code": 10015})


def notifier(server: LoopbackServer, token: str, thread_id: str | None = None) -> DiscordNotifier:
    return DiscordNotifier(
        DiscordSettings(
            Secret(webhook_url(server, token)), timeouts=HttpTimeouts(2.0, 5.0), thread_id=thread_id
        )
    )


def bucket_empty(refills_in: float) -> Callable[[Request], Reply]:
    """The stored message, with headers saying the webhook's bucket is now empty."""

    def answer(request: Request) -> Reply:
        headers = {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset-After": str(refills_in),
            "X-RateLimit-Bucket": "abcd1234",
        }
        return dataclasses.replace(discord_ok(request), headers=headers)

    return answer


def test_a_429_without_json_waits_x_ratelimit_reset_after(serve: Serve, webhook_token: str) -> None:
    limited = Reply(
        429,
        b"",
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "0.25", "Retry-After": "3"},
    )
    server = serve([limited, discord_ok])
    sleep = RecordedSleep()
    (delivery,) = Orchestrator([notifier(server, webhook_token)], sleep=sleep).deliver(make_event())
    assert delivery.ok and sleep.waits == [0.25]
    # The retry itself waited for the bucket (the recorded sleep does not sleep).
    first, second = server.requests
    assert second.at - first.at >= 0.25


def test_an_empty_bucket_is_waited_out_before_the_next_message(
    serve: Serve, webhook_token: str
) -> None:
    server = serve([bucket_empty(0.4), discord_ok], discord_validate)
    chat = notifier(server, webhook_token)
    assert chat.send(make_event()).ok
    assert chat.send(make_event(phase=Phase.CANCELLED)).ok
    first, second = server.requests
    assert second.at - first.at >= 0.4, "posted into an empty rate-limit bucket"


def test_a_bucket_that_refills_after_the_deadline_fails_without_a_request(
    serve: Serve, webhook_token: str
) -> None:
    server = serve([bucket_empty(30), discord_ok], discord_validate)
    chat = notifier(server, webhook_token)
    orchestrator = Orchestrator([chat], deadline=1.0, sleep=RecordedSleep())
    assert orchestrator.deliver(make_event())[0].ok
    (delivery,) = orchestrator.deliver(make_event(phase=Phase.CANCELLED))
    assert delivery.status is DeliveryStatus.FAILED
    assert "bucket refills in" in delivery.detail and "past the deadline" in delivery.detail
    assert len(server.requests) == 1


def cancelled(task_id: str = "sky-managed-2026_train-7b_42-0") -> Event:
    return make_event(
        task_id=task_id, phase=Phase.CANCELLED, reason=TerminationReason.SIGNALLED, exit_code=75
    )


def test_a_deleted_webhook_is_not_used_again_in_the_task(
    serve: Serve, webhook_token: str, tmp_path: Path
) -> None:
    server = serve([UNKNOWN_WEBHOOK, discord_ok])
    orchestrator = Orchestrator([notifier(server, webhook_token)], sleep=RecordedSleep())
    (first,) = orchestrator.notify(make_event(), state_dir=tmp_path)
    assert first.status is DeliveryStatus.FAILED and first.gone
    assert first.detail == "HTTP 404: Unknown Webhook (webhook deleted)"
    (second,) = orchestrator.notify(cancelled(), state_dir=tmp_path)
    assert second.status is DeliveryStatus.SKIPPED
    assert (
        second.detail == "not used again in this task: HTTP 404: Unknown Webhook (webhook deleted)"
    )
    # A restarted runner (same task, same state dir) remembers it too.
    restarted = Orchestrator([notifier(server, webhook_token)], sleep=RecordedSleep())
    (third,) = restarted.notify(cancelled(), state_dir=tmp_path)
    assert third.status is DeliveryStatus.SKIPPED
    assert len(server.requests) == 1
    # Another task (a new launch) tries the webhook again.
    (fresh,) = restarted.notify(cancelled("sky-managed-2026_train-7b_43-0"), state_dir=tmp_path)
    assert fresh.ok and len(server.requests) == 2


def test_without_a_state_dir_the_orchestrator_still_remembers(
    serve: Serve, webhook_token: str
) -> None:
    server = serve([UNKNOWN_WEBHOOK, discord_ok])
    orchestrator = Orchestrator([notifier(server, webhook_token)], sleep=RecordedSleep())
    assert orchestrator.notify(make_event())[0].gone
    assert orchestrator.notify(cancelled())[0].status is DeliveryStatus.SKIPPED
    assert len(server.requests) == 1


def test_a_forum_channel_needs_the_thread_id(serve: Serve, webhook_token: str) -> None:
    server = serve([discord_ok], discord_forum_validate)
    retry = RetrySettings(tries=1)
    (refused,) = Orchestrator([notifier(server, webhook_token)], retry=retry).deliver(make_event())
    assert refused.detail.startswith("HTTP 400: Webhooks posted to forum channels must have")
    (posted,) = Orchestrator([notifier(server, webhook_token, THREAD)], retry=retry).deliver(
        make_event()
    )
    assert posted.ok, posted
    query = server.requests[-1].path.partition("?")[2]
    assert sorted(query.split("&")) == [f"thread_id={THREAD}", "wait=true"]


def test_the_thread_id_comes_from_config_or_env() -> None:
    config = NotificationConfig.from_sources({"discord_thread_id": THREAD}, {})
    assert config.discord.thread_id == THREAD
    env = {"SKYGUARD_DISCORD_THREAD_ID": "42"}
    assert (
        NotificationConfig.from_sources({"discord_thread_id": THREAD}, env).discord.thread_id
        == "42"
    )
    with pytest.raises(
        ConfigError, match="SKYGUARD_DISCORD_THREAD_ID: expected a Discord thread id"
    ):
        NotificationConfig.from_sources(None, {"SKYGUARD_DISCORD_THREAD_ID": "general"})

"""Routing, retries, the total deadline, dedup across restarts and node rank."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devops.skypilot.common.lifecycle import Phase, phase_for
from devops.skypilot.common.termination import Termination, TerminationReason, exit_code_for
from notifications.channels.discord import DiscordNotifier, DiscordSettings
from notifications.channels.github import GitHubNotifier, GitHubSettings
from notifications.http import HttpTimeouts
from notifications.notifier import Delivery, DeliveryStatus, Event, Level, Links, Notifier
from notifications.orchestrator import (
    LEVEL_CHANNELS,
    ROUTES,
    Orchestrator,
    RetrySettings,
    route,
)
from notifications.secrets import Secret
from notifications.sentlog import LOCK_FILE, STATE_FILE
from tests.notifications.notify_fakes import (
    LoopbackServer,
    RecordedSleep,
    Reply,
    discord_ok,
    make_event,
    webhook_url,
)

Serve = Callable[..., LoopbackServer]
SHA = "0123456789abcdef0123456789abcdef01234567"
CHANNELS = {"discord", "slack", "github", "wandb"}


def discord(server: LoopbackServer, token: str, read: float = 5.0) -> DiscordNotifier:
    return DiscordNotifier(
        DiscordSettings(Secret(webhook_url(server, token)), timeouts=HttpTimeouts(2.0, read))
    )


def github(server: LoopbackServer, token: str = "ghp_x", read: float = 5.0) -> GitHubNotifier:
    return GitHubNotifier(
        GitHubSettings(Secret(token), "octo/trainer", server.url, timeouts=HttpTimeouts(2.0, read))
    )


def termination(reason: TerminationReason) -> Termination:
    return Termination(
        reason=reason,
        exit_code=exit_code_for(reason, 1),
        child_exit_code=1,
        signal=None,
        detail="",
        monitor="",
        attempt=1,
        started_at="",
        ended_at="",
        duration=1.0,
        node_rank=0,
        task_id="t",
    )


# --- routing --------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(TerminationReason))
def test_every_reason_is_routed_explicitly(reason: TerminationReason) -> None:
    """A new TerminationReason fails here until the routing table names it."""
    phase = phase_for(termination(reason))
    assert (phase, reason) in ROUTES, f"({phase.value}, {reason.value}) is not routed"
    level, channels = route(phase, reason)
    assert channels >= {"github", "discord"}
    assert level is not Level.STATUS


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("reason", [None, *TerminationReason])
def test_every_phase_and_reason_pair_reaches_a_channel(
    phase: Phase, reason: TerminationReason | None
) -> None:
    _, channels = route(phase, reason)
    assert channels and channels <= CHANNELS


def test_start_only_touches_the_commit_status() -> None:
    assert route(Phase.STARTED, None) == (Level.STATUS, frozenset({"github"}))
    assert set(LEVEL_CHANNELS) == set(Level)


def test_failures_are_louder_than_retries_and_successes() -> None:
    assert route(Phase.FAILED, TerminationReason.JOB_FAILED)[0] is Level.ERROR
    assert route(Phase.RETRYING, TerminationReason.NCCL_ERROR)[0] is Level.WARNING
    assert route(Phase.SUCCEEDED, TerminationReason.COMPLETED)[0] is Level.INFO


# --- retries --------------------------------------------------------------------------------


def test_transient_errors_get_three_tries_with_exponential_backoff(
    serve: Serve, webhook_token: str
) -> None:
    server = serve([Reply(500), Reply(502), Reply(503)])
    sleep = RecordedSleep()
    retry = RetrySettings(tries=3, initial=0.2, maximum=5.0, jitter=0.1)
    (delivery,) = Orchestrator([discord(server, webhook_token)], retry=retry, sleep=sleep).deliver(
        make_event()
    )
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.detail.startswith("HTTP 503")
    assert delivery.attempts == 3 and len(server.requests) == 3
    first, second = sleep.waits
    assert 0.2 <= first <= 0.3
    assert 0.4 <= second <= 0.5


def test_connection_refused_is_transient(webhook_token: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/webhooks/1/{webhook_token}"
    notifier = DiscordNotifier(DiscordSettings(Secret(url), timeouts=HttpTimeouts(1.0, 1.0)))
    sleep = RecordedSleep()
    (delivery,) = Orchestrator([notifier], sleep=sleep).deliver(make_event())
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.detail.startswith("connection failed")
    assert delivery.attempts == 3 and len(sleep.waits) == 2


def test_a_retry_after_beyond_the_deadline_gives_up_at_once(
    serve: Serve, webhook_token: str
) -> None:
    server = serve([Reply(429, {"retry_after": 60, "global": False})])
    sleep = RecordedSleep()
    (delivery,) = Orchestrator([discord(server, webhook_token)], deadline=5.0, sleep=sleep).deliver(
        make_event()
    )
    assert delivery.status is DeliveryStatus.FAILED
    assert "asked to wait 60s, past the deadline" in delivery.detail
    assert sleep.waits == [] and len(server.requests) == 1


# --- the total deadline ---------------------------------------------------------------------


def test_a_server_that_never_answers_costs_the_deadline_not_tries_times_timeout(
    serve: Serve, webhook_token: str
) -> None:
    hung = serve([Reply(hang=True)])
    orchestrator = Orchestrator(
        [discord(hung, webhook_token, read=30.0), github(hung, read=30.0)],
        deadline=1.5,
        retry=RetrySettings(tries=3),
    )
    start = time.monotonic()
    deliveries = orchestrator.deliver(make_event(links=Links(git_commit=SHA)))
    elapsed = time.monotonic() - start
    assert [d.status for d in deliveries] == [DeliveryStatus.FAILED] * 2
    # Unbounded, this costs 2 channels x 3 tries x 30 s; a generous guard, not a timing.
    assert elapsed < 0.1 * (2 * 3 * 30.0)


class Stuck(Notifier):
    """A channel that ignores the deadline entirely (a hung DNS lookup, say)."""

    name = "discord"

    def __init__(self) -> None:
        self.release = threading.Event()

    def missing(self) -> str | None:
        return None

    def _send(self, event: Event, deadline: float | None) -> Delivery:
        self.release.wait(60)
        return Delivery.sent(self.name)


@pytest.fixture
def stuck() -> Iterator[Stuck]:
    channel = Stuck()
    try:
        yield channel
    finally:
        channel.release.set()


def test_a_channel_that_ignores_the_deadline_is_abandoned_at_the_deadline(
    stuck: Stuck, serve: Serve
) -> None:
    """Channels run at once: the healthy one is sent while the stuck one is abandoned."""
    server = serve([Reply(201, {"id": 1})])
    orchestrator = Orchestrator([stuck, github(server)], deadline=1.0)
    start = time.monotonic()
    stuck_delivery, github_delivery = orchestrator.deliver(make_event(links=Links(git_commit=SHA)))
    assert time.monotonic() - start < 30.0
    assert stuck_delivery.status is DeliveryStatus.FAILED
    assert "deadline" in stuck_delivery.detail
    assert github_delivery.ok


# --- dedup, node rank and honest reporting --------------------------------------------------


def test_dedup_holds_across_a_runner_restart(
    serve: Serve, webhook_token: str, tmp_path: Path
) -> None:
    server = serve([discord_ok])
    event = make_event()
    first = Orchestrator([discord(server, webhook_token)]).notify(event, state_dir=tmp_path)
    assert [d.status for d in first] == [DeliveryStatus.SENT]
    # A new runner process: a new orchestrator over the same state dir.
    again = Orchestrator([discord(server, webhook_token)]).notify(event, state_dir=tmp_path)
    assert [d.status for d in again] == [DeliveryStatus.SKIPPED]
    assert "already sent" in again[0].detail
    assert len(server.requests) == 1
    # A different phase or reason of the same task is news.
    other = make_event(phase=Phase.RETRYING, reason=TerminationReason.HEARTBEAT_TIMEOUT)
    Orchestrator([discord(server, webhook_token)]).notify(other, state_dir=tmp_path)
    assert len(server.requests) == 2
    saved = json.loads((tmp_path / STATE_FILE).read_text())
    assert {(e["phase"], e["reason"], e["channel"]) for e in saved["sent"]} == {
        ("failed", "job_failed", "discord"),
        ("retrying", "heartbeat_timeout", "discord"),
    }
    # No temporary file left: the state and the (empty) lock file senders share.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LOCK_FILE, STATE_FILE])


def test_a_failed_channel_is_tried_again_after_a_restart(
    serve: Serve, webhook_token: str, tmp_path: Path
) -> None:
    broken = serve([Reply(401, {"message": "Invalid Webhook Token"})])
    healthy = serve([Reply(201, {"id": 1})])
    event = make_event(links=Links(git_commit=SHA))
    first = Orchestrator([discord(broken, webhook_token), github(healthy)]).notify(
        event, state_dir=tmp_path
    )
    assert [d.status for d in first] == [DeliveryStatus.FAILED, DeliveryStatus.SENT]
    again = Orchestrator([discord(broken, webhook_token), github(healthy)]).notify(
        event, state_dir=tmp_path
    )
    statuses = {d.channel: d.status for d in again}
    assert statuses == {"github": DeliveryStatus.SKIPPED, "discord": DeliveryStatus.FAILED}
    assert len(broken.requests) == 2 and len(healthy.requests) == 1


def test_an_unreadable_state_file_does_not_stop_notifications(
    serve: Serve, webhook_token: str, tmp_path: Path
) -> None:
    (tmp_path / STATE_FILE).write_text("{half a json")
    server = serve([discord_ok])
    (delivery,) = Orchestrator([discord(server, webhook_token)]).notify(
        make_event(), state_dir=tmp_path
    )
    assert delivery.ok
    assert json.loads((tmp_path / STATE_FILE).read_text())["sent"][0]["channel"] == "discord"


def test_only_node_rank_zero_sends(serve: Serve, webhook_token: str, tmp_path: Path) -> None:
    server = serve([discord_ok])
    deliveries = Orchestrator([discord(server, webhook_token)]).notify(
        make_event(), node_rank=1, state_dir=tmp_path
    )
    assert [d.status for d in deliveries] == [DeliveryStatus.SKIPPED]
    assert "rank 0" in deliveries[0].detail
    assert server.requests == [] and not (tmp_path / STATE_FILE).exists()


def test_start_goes_to_github_only(serve: Serve, webhook_token: str) -> None:
    chat, status = serve([discord_ok]), serve([Reply(201, {"id": 1})])
    deliveries = Orchestrator([discord(chat, webhook_token), github(status)]).notify(
        make_event(phase=Phase.STARTED, reason=None, links=Links(git_commit=SHA))
    )
    assert [d.channel for d in deliveries] == ["github"]
    assert chat.requests == [] and status.requests[0].json["state"] == "pending"


def test_a_failed_delivery_is_logged_as_failed_never_as_sent(
    serve: Serve, webhook_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve([Reply(500)])
    caplog.set_level(logging.INFO, logger="notifications")
    (delivery,) = Orchestrator([discord(server, webhook_token)], sleep=RecordedSleep()).notify(
        make_event()
    )
    assert delivery.status is DeliveryStatus.FAILED
    records = [r for r in caplog.records if r.name == "notifications.orchestrator"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "discord: failed: HTTP 500" in records[0].getMessage()
    assert "sent" not in records[0].getMessage()


def test_detail_quoting_another_channels_secret_is_scrubbed(
    serve: Serve, webhook_token: str
) -> None:
    chat = serve([discord_ok])
    status = serve([Reply(201, {"id": 1})])
    token = "ghp_" + "k" * 36
    event = make_event(detail=f"crash while using {token}", links=Links(git_commit=SHA))
    Orchestrator([discord(chat, webhook_token), github(status, token)]).deliver(event)
    assert token not in chat.requests[0].body.decode()
    assert "\\*\\*\\*" in chat.requests[0].json["embeds"][0]["description"]


class Warming(Notifier):
    name = "wandb"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.warmed = 0

    def missing(self) -> str | None:
        return None

    def _send(self, event: Event, deadline: float | None) -> Delivery:
        return Delivery.sent(self.name)

    def warm_up(self) -> None:
        self.warmed += 1
        if self.fail:
            raise RuntimeError("warm-up broke")


def test_warm_up_happens_on_the_head_node_only_and_never_raises() -> None:
    healthy, broken = Warming(), Warming(fail=True)
    orchestrator = Orchestrator([healthy, broken])
    orchestrator.warm_up(node_rank=1)
    assert healthy.warmed == 0
    orchestrator.warm_up(node_rank=0)
    assert healthy.warmed == 1 and broken.warmed == 1

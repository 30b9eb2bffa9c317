"""GitHub commit statuses against a loopback imitation of the statuses API."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from devops.skypilot.common.lifecycle import Phase
from devops.skypilot.common.termination import TerminationReason
from notifications.channels.github import STATES, GitHubNotifier, GitHubSettings, describe
from notifications.http import HttpTimeouts
from notifications.notifier import DeliveryStatus, Links
from notifications.orchestrator import Orchestrator
from notifications.secrets import Secret
from tests.notifications.notify_fakes import (
    LoopbackServer,
    RecordedSleep,
    Reply,
    github_validator,
    make_event,
)

Serve = Callable[..., LoopbackServer]
SHA = "0123456789abcdef0123456789abcdef01234567"


def notifier(server: LoopbackServer, token: str, **changes: Any) -> GitHubNotifier:
    settings = GitHubSettings(
        token=Secret(token),
        repo="octo/trainer",
        api_url=server.url + "/api/v3",
        timeouts=HttpTimeouts(2.0, 5.0),
    )
    return GitHubNotifier(dataclasses.replace(settings, **changes))


def created() -> Reply:
    return Reply(201, {"id": 1, "state": "pending"})


@pytest.mark.parametrize(
    ("phase", "reason", "state"),
    [
        (Phase.STARTED, None, "pending"),
        (Phase.RETRYING, TerminationReason.HEARTBEAT_TIMEOUT, "pending"),
        (Phase.SUCCEEDED, TerminationReason.COMPLETED, "success"),
        (Phase.FAILED, TerminationReason.JOB_FAILED, "failure"),
        (Phase.CANCELLED, TerminationReason.SIGNALLED, "error"),
    ],
)
def test_status_per_phase(
    serve: Serve,
    github_token: str,
    phase: Phase,
    reason: TerminationReason | None,
    state: str,
) -> None:
    server = serve([created()], github_validator(github_token))
    event = make_event(
        phase=phase,
        reason=reason,
        links=Links(git_commit=SHA, wandb_url="https://wandb.ai/e/p/runs/r1"),
    )
    delivery = notifier(server, github_token).send(event)
    assert delivery.ok, delivery
    (request,) = server.requests
    # The API base URL is configurable (GitHub Enterprise serves under /api/v3).
    assert request.path == f"/api/v3/repos/octo/trainer/statuses/{SHA}"
    assert request.headers["Accept"] == "application/vnd.github+json"
    body = request.json
    assert body["state"] == state
    assert body["context"] == "skyguard/train-7b"
    assert body["target_url"] == "https://wandb.ai/e/p/runs/r1"
    assert len(body["description"]) <= 140


def test_every_phase_has_a_state() -> None:
    assert set(STATES) == set(Phase)


def test_description_is_cut_to_140_characters() -> None:
    text = describe(make_event(detail="NCCL watchdog timeout " * 50))
    assert len(text) == 140 and text.endswith("…")
    assert text.startswith("failed: job_failed, exit 1, attempt 2, 1h 02m 03s")


def test_configured_context_and_dashboard_link(serve: Serve, github_token: str) -> None:
    server = serve([created()], github_validator(github_token))
    links = Links(
        git_commit=SHA, dashboard_url="https://sky.example/jobs/42", wandb_url="https://w/x"
    )
    delivery = notifier(server, github_token, context="ci/train").send(make_event(links=links))
    assert delivery.ok
    body = server.requests[0].json
    assert body["context"] == "ci/train"
    assert body["target_url"] == "https://sky.example/jobs/42"


def test_test_events_use_their_own_context(serve: Serve, github_token: str) -> None:
    server = serve([created()], github_validator(github_token))
    notifier(server, github_token).send(make_event(test=True, links=Links(git_commit=SHA)))
    assert server.requests[0].json["context"] == "skyguard/train-7b/test"


def test_401_is_final_and_reported(serve: Serve, github_token: str) -> None:
    server = serve([created()], github_validator("ghp_the_right_one"))
    sleep = RecordedSleep()
    (delivery,) = Orchestrator([notifier(server, github_token)], sleep=sleep).deliver(
        make_event(links=Links(git_commit=SHA))
    )
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.detail == "HTTP 401: Bad credentials"
    assert delivery.attempts == 1 and len(server.requests) == 1 and sleep.waits == []


def test_422_is_final_and_reported(serve: Serve, github_token: str) -> None:
    server = serve(
        [Reply(422, {"message": "No commit found for SHA: " + SHA})],
        github_validator(github_token),
    )
    (delivery,) = Orchestrator([notifier(server, github_token)], sleep=RecordedSleep()).deliver(
        make_event(links=Links(git_commit=SHA))
    )
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.detail.startswith("HTTP 422: No commit found for SHA")
    assert len(server.requests) == 1


def test_secondary_rate_limit_403_is_retried(serve: Serve, github_token: str) -> None:
    limited = Reply(403, {"message": "secondary rate limit"}, {"Retry-After": "0"})
    server = serve([limited, created()], github_validator(github_token))
    sleep = RecordedSleep()
    (delivery,) = Orchestrator([notifier(server, github_token)], sleep=sleep).deliver(
        make_event(links=Links(git_commit=SHA))
    )
    assert delivery.ok and delivery.attempts == 2 and sleep.waits == [0.0]


def test_no_commit_is_skipped_without_a_request(serve: Serve, github_token: str) -> None:
    server = serve([created()])
    delivery = notifier(server, github_token).send(make_event(links=Links()))
    assert delivery.status is DeliveryStatus.SKIPPED
    assert "SKYGUARD_GIT_COMMIT" in delivery.detail
    assert server.requests == []


def test_missing_token_or_repo_disables_the_channel() -> None:
    assert GitHubNotifier(GitHubSettings(repo="o/r")).missing() is not None
    assert GitHubNotifier(GitHubSettings(token=Secret("t"))).missing() is not None
    assert GitHubNotifier(GitHubSettings(token=Secret("t"), repo="o/r")).enabled


def test_a_hang_names_the_stuck_rank_and_line_first() -> None:
    """The verdict's words would fill the 140 characters before the stacks' line."""
    detail = (
        "node 1 ended: heartbeat_timeout (exit 75): no heartbeat from rank 3 for 8.0s "
        "(timeout 8s); rank 2 still beating; stacks on node 1: rank 3 (pid 4242) in "
        "time.sleep at train.py:64 (_run_epoch); rank 2: in all_reduce at train.py:70 "
        "(_run_epoch) [HeartbeatMonitor]; stacks on node 0: ranks 0, 1: in all_reduce at "
        "train.py:70 (_run_epoch)"
    )
    event = make_event(reason=TerminationReason.PEER_FAILED, exit_code=75, detail=detail)
    assert describe(event) == (
        "failed: peer_failed, exit 75, attempt 2, 1h 02m 03s - "
        "node 1 rank 3 in time.sleep at train.py:64 (_run_epoch)"
    )
    single = "no heartbeat for 8.0s (timeout 8s); stacks: rank 1 (pid 7) in recv at w.py:9 (main)"
    assert describe(make_event(detail=single)).endswith(" - rank 1 in recv at w.py:9 (main)")
    # Only the runner's own "; stacks" part counts, not words in a crash's output.
    crash = "command exited 1: printed stacks: none"
    assert describe(make_event(detail=crash)).endswith(" - command exited 1: printed stacks: none")

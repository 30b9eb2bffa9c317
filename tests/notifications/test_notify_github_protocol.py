"""What GitHub's REST docs require beyond the body schema: the context cap, rate-limit
headers, redirects after a rename, 422 details; and links that are valid URIs."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from notifications.channels.github import GitHubNotifier, GitHubSettings
from notifications.channels.wandb import WandbSettings
from notifications.config import ConfigError, NotificationConfig
from notifications.http import HttpTimeouts
from notifications.notifier import Delivery, DeliveryStatus, Links
from notifications.orchestrator import Orchestrator, RetrySettings
from notifications.secrets import Secret
from tests.notifications.notify_fakes import (
    LoopbackServer,
    RecordedSleep,
    Reply,
    github_validator,
    make_event,
)

Serve = Callable[..., LoopbackServer]
#: GitHub answers 422 for a longer status context.
CONTEXT_LIMIT = 255
SHA = "0123456789abcdef0123456789abcdef01234567"
#: RFC 3986: what a URI may contain, and a percent sign only before two hex digits.
URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")


def notifier(server: LoopbackServer, token: str, repo: str = "octo/trainer") -> GitHubNotifier:
    return GitHubNotifier(
        GitHubSettings(Secret(token), repo, server.url, timeouts=HttpTimeouts(2.0, 5.0))
    )


def created() -> Reply:
    return Reply(201, {"id": 1, "state": "failure"})


def send(
    server: LoopbackServer, token: str, *, deadline: float = 20.0, repo: str = "octo/trainer"
) -> tuple[Delivery, RecordedSleep]:
    sleep = RecordedSleep()
    orchestrator = Orchestrator(
        [notifier(server, token, repo)],
        deadline=deadline,
        retry=RetrySettings(tries=3),
        sleep=sleep,
    )
    (delivery,) = orchestrator.deliver(make_event(links=Links(git_commit=SHA)))
    return delivery, sleep


# --- context ---------------------------------------------------------------------------------


def test_a_long_job_name_is_capped_to_githubs_context_limit(
    serve: Serve, github_token: str
) -> None:
    server = serve([created()], github_validator(github_token))
    delivery = notifier(server, github_token).send(
        make_event(job_name="j" * 600, links=Links(git_commit=SHA))
    )
    assert delivery.ok, delivery
    context = server.requests[0].json["context"]
    assert len(context) == CONTEXT_LIMIT and context.startswith("skyguard/jjj")


def test_a_test_status_keeps_its_suffix_within_the_cap(serve: Serve, github_token: str) -> None:
    server = serve([created()], github_validator(github_token))
    event = make_event(job_name="j" * 600, test=True, links=Links(git_commit=SHA))
    assert notifier(server, github_token).send(event).ok
    context = server.requests[0].json["context"]
    assert len(context) == CONTEXT_LIMIT and context.endswith("/test")


def test_a_configured_context_over_the_cap_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="github_context: at most 255"):
        NotificationConfig.from_sources({"github_context": "c" * 256}, {})


def test_422_keeps_the_reason_from_errors(serve: Serve, github_token: str) -> None:
    error = {"resource": "Status", "code": "custom", "field": "context"}
    error["message"] = "context is too long (maximum is 255 characters)"
    server = serve([Reply(422, {"message": "Validation Failed", "errors": [error]})])
    delivery, _ = send(server, github_token)
    assert delivery.detail == (
        "HTTP 422: Validation Failed: context is too long (maximum is 255 characters)"
    )


def test_422_errors_without_a_message_name_field_and_code(serve: Serve, github_token: str) -> None:
    error = {"resource": "Status", "code": "invalid", "field": "state"}
    server = serve([Reply(422, {"message": "Validation Failed", "errors": [error, "sha is bad"]})])
    delivery, _ = send(server, github_token)
    assert delivery.detail == "HTTP 422: Validation Failed: state invalid: sha is bad"


# --- rate limits -----------------------------------------------------------------------------


def primary_limit(reset_in: float) -> Reply:
    headers = {
        "x-ratelimit-limit": "5000",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-used": "5000",
        "x-ratelimit-reset": str(math.ceil(time.time() + reset_in)),
    }
    return Reply(403, {"message": "API rate limit exceeded for user ID 1."}, headers)


def test_a_primary_limit_an_hour_away_fails_at_once(serve: Serve, github_token: str) -> None:
    server = serve([primary_limit(3600), created()], github_validator(github_token))
    started = time.monotonic()
    delivery, sleep = send(server, github_token, deadline=5.0)
    assert delivery.status is DeliveryStatus.FAILED
    assert "rate limit resets in" in delivery.detail and "past the deadline" in delivery.detail
    assert len(server.requests) == 1 and sleep.waits == []
    assert time.monotonic() - started < 4.0  # a guard against hanging, not a speed claim


def test_a_primary_limit_that_resets_soon_waits_for_the_reset(
    serve: Serve, github_token: str
) -> None:
    server = serve([primary_limit(3.0), created()], github_validator(github_token))
    delivery, sleep = send(server, github_token)
    assert delivery.ok, delivery
    (wait,) = sleep.waits
    # The reset (an epoch second) is 2-4 s away; backoff alone would wait at most 1 s.
    assert 1.5 < wait <= 4.0


@pytest.mark.parametrize(
    "reply",
    [
        Reply(403, {"message": "You have exceeded a secondary rate limit. Please wait."}),
        Reply(429, {"message": "Too many requests"}),
    ],
)
def test_a_secondary_limit_without_headers_waits_a_minute_or_fails_in_the_deadline(
    serve: Serve, github_token: str, reply: Reply
) -> None:
    server = serve([reply, reply, created()], github_validator(github_token))
    delivery, sleep = send(server, github_token, deadline=20.0)
    assert delivery.status is DeliveryStatus.FAILED and delivery.transient
    assert "secondary rate limit" in delivery.detail and "past the deadline" in delivery.detail
    assert len(server.requests) == 1 and sleep.waits == []
    # With more than a minute to spare it waits the minute, then sends.
    delivery, sleep = send(server, github_token, deadline=120.0)
    assert delivery.ok and sleep.waits == [60.0] and len(server.requests) == 3


# --- redirects -------------------------------------------------------------------------------


def test_a_renamed_repository_is_followed_with_the_same_post(
    serve: Serve, github_token: str
) -> None:
    server = serve([created()], github_validator(github_token, moved={"octo/old-name": 4242}))
    delivery, _ = send(server, github_token, repo="octo/old-name")
    assert delivery.ok, delivery
    first, second = server.requests
    assert first.path == f"/repos/octo/old-name/statuses/{SHA}"
    assert second.path == f"/repositories/4242/statuses/{SHA}"
    assert second.method == "POST" and second.body == first.body
    assert second.headers["Authorization"] == f"Bearer {github_token}"


@pytest.mark.parametrize("status", [301, 307])
def test_a_redirect_to_another_host_is_not_followed(
    serve: Serve, github_token: str, status: int
) -> None:
    elsewhere = serve([created()])
    location = f"{elsewhere.url}/repositories/1/statuses/{SHA}"
    server = serve([Reply(status, {"message": "Moved"}, {"Location": location})])
    delivery, _ = send(server, github_token)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.detail == f"HTTP {status}: redirected to another host, not followed"
    assert elsewhere.requests == []


# --- links -----------------------------------------------------------------------------------


def test_template_values_in_the_dashboard_link_are_url_encoded(
    serve: Serve, github_token: str
) -> None:
    job = "llm 7b&lr=3e-4#2/x?y"
    config = NotificationConfig.from_sources(
        {"dashboard_url": "https://sky.example/jobs/{job_name}?task={task_id}&id={job_id}"},
        {"SKYPILOT_MANAGED_JOB_ID": "42"},
    )
    links = config.links(job, "sky-managed 1&2")
    url = links.dashboard_url
    assert url is not None and URI.fullmatch(url), url
    parts = urlsplit(url)
    assert unquote(parts.path) == f"/jobs/{job}"
    assert parse_qs(parts.query) == {"task": ["sky-managed 1&2"], "id": ["42"]}
    server = serve([created()], github_validator(github_token))
    event = make_event(job_name=job, links=Links(git_commit=SHA, dashboard_url=url))
    assert notifier(server, github_token).send(event).ok
    assert server.requests[0].json["target_url"] == url


@pytest.mark.parametrize("base", ["javascript:alert(1)", "ftp://wandb.example", "wandb.example"])
def test_a_wandb_base_url_that_is_not_http_is_refused(base: str) -> None:
    with pytest.raises(ConfigError, match="WANDB_BASE_URL: expected an http"):
        NotificationConfig.from_sources(None, {"WANDB_BASE_URL": base})
    settings = WandbSettings(run_id="r", project="p", entity="e", base_url=base)
    assert settings.run_url() is None


def test_the_wandb_link_encodes_its_parts() -> None:
    settings = WandbSettings(run_id="r/1", project="my proj", entity="e#1")
    url = settings.run_url()
    assert url == "https://wandb.ai/e%231/my%20proj/runs/r%2F1" and URI.fullmatch(url)

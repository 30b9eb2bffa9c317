"""GitHub commit status: ``POST {api}/repos/{owner}/{repo}/statuses/{sha}``.

One status per ``context`` (default ``skyguard/<job name>``, at most 255 characters,
GitHub's limit) on the job's commit: ``pending`` at start and on each retry, then
``success``, ``failure`` (the job failed) or ``error`` (cancelled or preempted). GitHub
keeps at most 1000 statuses per commit and context; a job posts a handful.

Rate limits follow GitHub's REST guide: wait what ``retry-after`` says; with
``x-ratelimit-remaining: 0`` wait until ``x-ratelimit-reset``; a secondary limit that
names no time waits at least a minute. A wait past the deadline fails at once.
A renamed or transferred repository answers 301/307: the POST is repeated at the new
location on the same host.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from devops.skypilot.common.forensics import culprit
from devops.skypilot.common.lifecycle import Phase
from notifications.http import (
    HttpTimeouts,
    delivery_from_response,
    describe_response,
    json_body,
    post_json,
    seconds_from,
)
from notifications.notifier import Delivery, Event, Notifier, clean_text, format_duration
from notifications.secrets import Secret

if TYPE_CHECKING:
    import requests

DEFAULT_API_URL = "https://api.github.com"
DESCRIPTION_LIMIT = 140
#: GitHub answers 422 for a longer context, so the status would never appear.
CONTEXT_LIMIT = 255
API_VERSION = "2022-11-28"
#: "If you receive a secondary rate limit ... wait for at least one minute before retrying."
SECONDARY_LIMIT_WAIT = 60.0
#: A rename and a transfer each add one hop.
MAX_REDIRECTS = 3
TEST_SUFFIX = "/test"

STATES: Mapping[Phase, str] = {
    Phase.STARTED: "pending",
    Phase.RETRYING: "pending",
    Phase.SUCCEEDED: "success",
    Phase.FAILED: "failure",
    # Not the code's fault, but not a result either.
    Phase.CANCELLED: "error",
}


@dataclass(frozen=True)
class GitHubSettings:
    token: Secret | None = None
    #: ``owner/name``.
    repo: str | None = None
    api_url: str = DEFAULT_API_URL
    #: None: ``skyguard/<job name>``.
    context: str | None = None
    timeouts: HttpTimeouts = field(default_factory=HttpTimeouts)

    def context_for(self, event: Event) -> str:
        context = self.context or f"skyguard/{event.job_name}"
        # A test must not overwrite the real status of the commit.
        suffix = TEST_SUFFIX if event.test else ""
        return context[: CONTEXT_LIMIT - len(suffix)] + suffix


def describe(event: Event) -> str:
    """Plain text, at most 140 characters: ``failed: job_failed, exit 1, attempt 2, 1h 02m 03s``
    and the detail, or, for a hang with stacks, where the stuck rank is."""
    parts = [event.phase.value + (f": {event.reason.value}" if event.reason else "")]
    if event.exit_code is not None and event.phase is not Phase.STARTED:
        parts.append(f"exit {event.exit_code}")
    parts.append(f"attempt {event.attempt}")
    if event.elapsed:
        parts.append(format_duration(event.elapsed))
    if event.test:
        parts.insert(0, "skyguard notify --test")
    text = ", ".join(parts)
    # A hang's stuck rank and line do not fit after the verdict's words: they go first.
    detail = " ".join(clean_text(event.detail).split())
    detail = culprit(detail) or detail
    if detail:
        text += f" - {detail}"
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 1] + "…"


def rate_limit_wait(response: requests.Response) -> tuple[float, str] | None:
    """How long a 403/429 rate limit asks us to wait, and why; None for any other answer."""
    if response.status_code not in (403, 429):
        return None
    headers = response.headers
    after = seconds_from(headers.get("Retry-After"))
    if after is not None:
        return after, f"retry-after {after:g}s"
    if headers.get("X-RateLimit-Remaining") == "0":
        reset = seconds_from(headers.get("X-RateLimit-Reset"))
        if reset is not None:
            wait = max(0.0, reset - time.time())
            return wait, f"rate limit resets in {wait:.0f}s"
    body = json_body(response)
    message = str(body.get("message", "")) if body else ""
    if response.status_code == 429 or "secondary rate limit" in message.lower():
        return (
            SECONDARY_LIMIT_WAIT,
            f"secondary rate limit: waiting at least {SECONDARY_LIMIT_WAIT:g}s",
        )
    return None


def github_answer(channel: str, response: requests.Response) -> Delivery:
    limited = rate_limit_wait(response)
    if limited is None:
        return delivery_from_response(channel, response)
    wait, why = limited
    return Delivery.failed(
        channel, f"{describe_response(response)} ({why})", transient=True, retry_after=wait
    )


class GitHubNotifier(Notifier):
    name = "github"

    def __init__(self, settings: GitHubSettings) -> None:
        self.settings = settings

    def missing(self) -> str | None:
        if self.settings.token is None:
            return "no token (set GITHUB_TOKEN or SKYGUARD_GITHUB_TOKEN)"
        if not self.settings.repo:
            return "no repository (set SKYGUARD_GITHUB_REPO=owner/name)"
        return None

    def secrets(self) -> tuple[str, ...]:
        token = self.settings.token
        return () if token is None else (token.reveal(),)

    def _send(self, event: Event, deadline: float | None) -> Delivery:
        token, repo = self.settings.token, self.settings.repo
        if token is None or not repo:
            return Delivery.skipped(self.name, "no token or repository")
        sha = event.links.git_commit
        if not sha:
            return Delivery.skipped(self.name, "no git commit (set SKYGUARD_GIT_COMMIT)")
        payload = {
            "state": STATES[event.phase],
            "description": describe(event),
            "context": self.settings.context_for(event),
        }
        if event.links.target_url:
            payload["target_url"] = event.links.target_url
        url = f"{self.settings.api_url.rstrip('/')}/repos/{repo}/statuses/{sha}"
        delivery = post_json(
            self.name,
            url,
            payload,
            headers={
                "Authorization": f"Bearer {token.reveal()}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "skyguard",
            },
            timeouts=self.settings.timeouts,
            deadline=deadline,
            answer=github_answer,
            redirects=MAX_REDIRECTS,
        )
        if delivery.ok:
            return Delivery.sent(
                self.name, f"{payload['state']} on {sha[:12]} ({payload['context']})"
            )
        return delivery

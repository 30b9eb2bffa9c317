"""GitHub commit status: ``POST {api}/repos/{owner}/{repo}/statuses/{sha}``.

One status per ``context`` (default ``skyguard/<job name>``) on the job's commit:
``pending`` at start and on each retry, then ``success``, ``failure`` (the job
failed) or ``error`` (cancelled or preempted). GitHub keeps at most 1000
statuses per commit and context; a job posts a handful.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from devops.skypilot.common.lifecycle import Phase
from notifications.http import HttpTimeouts, post_json
from notifications.notifier import Delivery, Event, Notifier, clean_text, format_duration
from notifications.secrets import Secret

DEFAULT_API_URL = "https://api.github.com"
DESCRIPTION_LIMIT = 140
API_VERSION = "2022-11-28"

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
        return f"{context}/test" if event.test else context


def describe(event: Event) -> str:
    """Plain text, at most 140 characters: ``failed: job_failed, exit 1, attempt 2, 1h 02m 03s``."""
    parts = [event.phase.value + (f": {event.reason.value}" if event.reason else "")]
    if event.exit_code is not None and event.phase is not Phase.STARTED:
        parts.append(f"exit {event.exit_code}")
    parts.append(f"attempt {event.attempt}")
    if event.elapsed:
        parts.append(format_duration(event.elapsed))
    if event.test:
        parts.insert(0, "skyguard notify --test")
    text = ", ".join(parts)
    detail = " ".join(clean_text(event.detail).split())
    if detail:
        text += f" - {detail}"
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 1] + "…"


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
        )
        if delivery.ok:
            return Delivery.sent(
                self.name, f"{payload['state']} on {sha[:12]} ({payload['context']})"
            )
        return delivery

"""Slack: one incoming-webhook message per event, Block Kit with a plain text fallback.

The webhook URL is the credential (whoever holds it can post to the channel). Slack
answers in plain text: ``200 ok``; 400 ``invalid_payload``, ``no_text``,
``invalid_blocks``; 403 ``action_prohibited``, ``invalid_token``, ``team_disabled``;
404 ``no_service`` (webhook removed or disabled), ``channel_not_found``; 410
``channel_is_archived``; 429 with ``Retry-After``; 500 ``rollup_error``. Only
``200 ok`` counts as sent; after a 404 or 410 the webhook is not used again in the task.

Limits (Block Kit reference): at most 50 blocks; a header's plain text 150
characters; a section's text 3000; at most 10 section fields of 2000 each; at most 10
context elements. Over-long text is cut with a visible marker; a message is never
split. The fallback ``text`` (shown in notifications) is kept to 3000 characters.

mrkdwn: Slack's docs name three control characters, ``&``, ``<`` and ``>``, to be
written as ``&amp;``, ``&lt;`` and ``&gt;``, so text from a log can never become a
link or a mention (``<!channel>``, ``<@U123>``). Text from the log also goes into a
code block, where ``*bold*``, ``_italic_`` and ``~strike~`` are not applied (a run
of backticks is broken up so it cannot close the block), and mrkdwn objects are
``verbatim`` so Slack does not turn bare URLs, ``#channel`` or ``@here`` into links.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from devops.skypilot.common.credentials import SLACK_WEBHOOK_VAR
from devops.skypilot.common.lifecycle import Phase
from notifications.channels.webhook import WebhookNotifier
from notifications.http import TRANSIENT_STATUSES, HttpTimeouts, post_json, seconds_from
from notifications.notifier import (
    MAX_ERROR_TEXT,
    Delivery,
    Event,
    clean_text,
    format_duration,
)
from notifications.secrets import Secret

if TYPE_CHECKING:
    import requests

MAX_BLOCKS = 50
HEADER_LIMIT = 150
SECTION_TEXT_LIMIT = 3000
MAX_FIELDS = 10
FIELD_LIMIT = 2000
MAX_CONTEXT_ELEMENTS = 10
#: Slack truncates ``text`` at 40,000 characters; a notification needs far less.
TEXT_LIMIT = 3000
TRUNCATED = "… [truncated]"
#: Task ids, commands, commits: anything longer is cut inside its code span.
IDENTIFIER_LIMIT = 500
#: A deleted webhook (``no_service``, ``channel_not_found``) or an archived channel.
GONE_STATUSES = frozenset({404, 410})

PHASE_MARKS: Mapping[Phase, str] = {
    Phase.STARTED: "🔵",
    Phase.RETRYING: "🟠",
    Phase.SUCCEEDED: "✅",
    Phase.FAILED: "🔴",
    Phase.CANCELLED: "⚪",
}

_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape_mrkdwn(text: str) -> str:
    """``&``, ``<``, ``>`` as entities (and terminal control codes dropped)."""
    return re.sub(r"[&<>]", lambda m: _ENTITIES[m.group()], clean_text(text))


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with a visible marker; entities stay whole."""
    if len(text) <= limit:
        return text
    if limit <= len(TRUNCATED):
        return TRUNCATED[:limit]
    cut = text[: limit - len(TRUNCATED)]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]  # half an entity would show as "&am"
    return cut + TRUNCATED


def code_block(text: str, limit: int) -> str:
    """Escaped text in a ``` block that nothing inside can close, within ``limit``."""
    # A zero-width space between backticks: ``` inside the text cannot end the block.
    body = re.sub(r"`(?=`)", "`\u200b", escape_mrkdwn(text))
    return f"```{truncate(body, limit - 6)}```"


def inline_code(text: str, limit: int = IDENTIFIER_LIMIT) -> str:
    """Inline code: formatting is not applied inside; a backtick would end it early.
    Cut inside the backticks, so a long value cannot leave the code span open."""
    return "`" + truncate(escape_mrkdwn(text).replace("`", "'"), limit) + "`"


def link(url: str | None, label: str) -> str | None:
    """``<url|label>`` for an http(s) URL; ``|`` in it would end the URL early."""
    if not url or urlsplit(url).scheme not in ("http", "https"):
        return None
    target = escape_mrkdwn(url).replace("|", "%7C")
    # A cut URL would be a broken link: leave out one that does not fit.
    return f"<{target}|{label}>" if len(target) + len(label) + 3 <= FIELD_LIMIT else None


@dataclass(frozen=True)
class SlackSettings:
    webhook_url: Secret | None = None
    timeouts: HttpTimeouts = field(default_factory=HttpTimeouts)


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _fields(event: Event) -> list[dict[str, Any]]:
    links = event.links
    values: list[tuple[str, str | None]] = [
        ("Reason", inline_code(event.reason.value) if event.reason else None),
        ("Exit code", None if event.exit_code is None else str(event.exit_code)),
        ("Attempt", str(event.attempt)),
        ("Runtime", format_duration(event.elapsed) if event.elapsed else None),
        ("Nodes", str(event.num_nodes)),
        ("Commit", inline_code(links.git_commit[:12]) if links.git_commit else None),
        ("Logs", inline_code(links.log_command) if links.log_command else None),
    ]
    shown = [(name, value) for name, value in values if value][:MAX_FIELDS]
    return [_mrkdwn(truncate(f"*{name}*\n{value}", FIELD_LIMIT)) for name, value in shown]


def build_payload(event: Event) -> dict[str, Any]:
    """The webhook JSON for ``event``, within every Slack limit."""
    prefix = "[test] " if event.test else ""
    title = f"{PHASE_MARKS[event.phase]} {prefix}{clean_text(event.job_name)}: {event.phase.value}"
    blocks: list[dict[str, Any]] = [
        # plain_text: nothing in a job name is markup here.
        {"type": "header", "text": {"type": "plain_text", "text": truncate(title, HEADER_LIMIT)}},
        {"type": "section", "fields": _fields(event)},
    ]
    if event.detail.strip():
        text = code_block(event.detail, SECTION_TEXT_LIMIT)
        blocks.append({"type": "section", "text": _mrkdwn(text)})
    context = [
        f"skyguard · task {inline_code(event.task_id)}",
        link(event.links.dashboard_url, "Dashboard"),
        link(event.links.wandb_url, "W&amp;B run"),
    ]
    elements = [_mrkdwn(truncate(c, FIELD_LIMIT)) for c in context if c]
    blocks.append({"type": "context", "elements": elements[:MAX_CONTEXT_ELEMENTS]})
    return {
        "text": truncate(escape_mrkdwn(event.headline), TEXT_LIMIT),
        "blocks": blocks[:MAX_BLOCKS],
        "unfurl_links": False,
        "unfurl_media": False,
    }


def slack_answer(channel: str, response: requests.Response) -> Delivery:
    """Slack answers in plain text: ``ok``, or the error's name."""
    status = response.status_code
    said = " ".join(clean_text(response.text).split())[:MAX_ERROR_TEXT]
    if status == 200 and said == "ok":
        return Delivery.sent(channel, "HTTP 200 ok")
    if 200 <= status < 300:
        return Delivery.failed(channel, f"HTTP {status} without Slack's ok: {said!r}")
    detail = f"HTTP {status}: {said}" if said and not said.startswith("<") else f"HTTP {status}"
    if status in GONE_STATUSES:
        return Delivery.failed(channel, f"{detail} (webhook removed or channel gone)", gone=True)
    transient = status >= 500 or status in TRANSIENT_STATUSES
    wait = seconds_from(response.headers.get("Retry-After")) if transient else None
    return Delivery.failed(channel, detail, transient=transient, retry_after=wait)


class SlackNotifier(WebhookNotifier):
    name = "slack"
    settings: SlackSettings
    url_variable = SLACK_WEBHOOK_VAR

    def _send(self, event: Event, deadline: float | None) -> Delivery:
        url = self.settings.webhook_url
        if url is None:
            return Delivery.skipped(self.name, "no webhook URL")
        return post_json(
            self.name,
            url.reveal(),
            build_payload(event),
            headers={"User-Agent": "skyguard"},
            timeouts=self.settings.timeouts,
            deadline=deadline,
            answer=slack_answer,
        )

"""Discord: one webhook message with one embed per event.

Limits (Discord's API): content 2000 characters; embed title 256, description
4096, field name 256, field value 1024, footer 2048, all embed text together
6000. Over-long text is cut with a visible marker; a message is never split,
so a chatty failure cannot flood the channel. ``allowed_mentions`` is empty, so
text from a log can never ping ``@everyone`` or a role.

The webhook is called with ``?wait=true``: Discord then answers with the stored
message, and only that counts as sent (a bare 204 only says the request was
queued). ``thread_id`` posts into a thread (a forum channel's post). Rate limits:
the JSON ``retry_after`` or ``X-RateLimit-Reset-After`` of a 429 is waited, and a
bucket that an answer reports empty (``X-RateLimit-Remaining: 0``) is waited out
before the next message. A 404 means the webhook was deleted: the orchestrator
stops using it for the task.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from devops.skypilot.common.credentials import DISCORD_WEBHOOK_VAR
from devops.skypilot.common.lifecycle import Phase
from notifications.channels.webhook import WebhookNotifier
from notifications.http import (
    HttpTimeouts,
    delivery_from_response,
    json_body,
    post_json,
    seconds_from,
)
from notifications.notifier import Delivery, Event, clean_text, format_duration
from notifications.secrets import Secret

if TYPE_CHECKING:
    import requests

CONTENT_LIMIT = 2000
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELD_NAME_LIMIT = 256
FIELD_VALUE_LIMIT = 1024
FOOTER_LIMIT = 2048
EMBED_TOTAL_LIMIT = 6000
TRUNCATED = "… [truncated]"

PHASE_COLOURS: Mapping[Phase, int] = {
    Phase.STARTED: 0x3498DB,  # blue
    Phase.RETRYING: 0xE67E22,  # orange
    Phase.SUCCEEDED: 0x2ECC71,  # green
    Phase.FAILED: 0xE74C3C,  # red
    Phase.CANCELLED: 0x95A5A6,  # grey
}

# Bold, italics, strike, spoiler, code, quotes, headings, lists, masked links and
# <@mentions>: escaped anywhere, which Discord renders as the plain character.
_MARKDOWN = re.compile(r"([\\*_~`|>#\-\[\]()<])")


def escape_markdown(text: str) -> str:
    return _MARKDOWN.sub(r"\\\1", clean_text(text))


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with a visible marker; escapes stay whole."""
    if len(text) <= limit:
        return text
    if limit <= len(TRUNCATED):
        return TRUNCATED[:limit]
    cut = text[: limit - len(TRUNCATED)]
    trailing = len(cut) - len(cut.rstrip("\\"))
    if trailing % 2:
        # A lone backslash would escape the marker's first character.
        cut = cut[:-1]
    return cut + TRUNCATED


@dataclass(frozen=True)
class DiscordSettings:
    webhook_url: Secret | None = None
    username: str = "skyguard"
    timeouts: HttpTimeouts = field(default_factory=HttpTimeouts)
    #: Post into this thread; a forum channel's webhook needs one (its posts are threads).
    thread_id: str | None = None


def _code(text: str) -> str:
    """Inline code: markdown escapes are not processed there, so only backticks go."""
    return f"`{text.replace('`', '')}`"


def _fields(event: Event) -> list[dict[str, Any]]:
    links = event.links
    values: list[tuple[str, str | None, bool]] = [
        ("Reason", _code(event.reason.value) if event.reason else None, True),
        ("Exit code", None if event.exit_code is None else str(event.exit_code), True),
        ("Attempt", str(event.attempt), True),
        ("Runtime", format_duration(event.elapsed) if event.elapsed else None, True),
        ("Nodes", str(event.num_nodes), True),
        ("Commit", _code(links.git_commit[:12]) if links.git_commit else None, True),
        ("Logs", _code(links.log_command) if links.log_command else None, False),
        ("Dashboard", links.dashboard_url, False),
        ("W&B run", links.wandb_url, False),
    ]
    return [
        {
            "name": truncate(name, FIELD_NAME_LIMIT),
            "value": truncate(value, FIELD_VALUE_LIMIT),
            "inline": inline,
        }
        for name, value, inline in values
        if value
    ]


def _embed_size(embed: Mapping[str, Any]) -> int:
    size = len(embed.get("title", "")) + len(embed.get("description", ""))
    size += len(embed.get("footer", {}).get("text", ""))
    return size + sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", []))


def build_payload(event: Event, username: str = "skyguard") -> dict[str, Any]:
    """The webhook JSON for ``event``, within every Discord limit."""
    prefix = "[test] " if event.test else ""
    title = truncate(f"{prefix}{escape_markdown(event.job_name)}: {event.phase.value}", TITLE_LIMIT)
    embed: dict[str, Any] = {
        "title": title,
        "description": truncate(escape_markdown(event.detail), DESCRIPTION_LIMIT),
        "color": PHASE_COLOURS[event.phase],
        "fields": _fields(event),
        "footer": {"text": truncate(f"skyguard · task {event.task_id}", FOOTER_LIMIT)},
        "timestamp": datetime.now(timezone.utc).isoformat(),
    }
    excess = _embed_size(embed) - EMBED_TOTAL_LIMIT
    if excess > 0:
        # The description is the free text: it gives way first.
        description = embed["description"]
        embed["description"] = truncate(description, max(0, len(description) - excess))
    if not embed["description"]:
        del embed["description"]
    return {
        "content": truncate(escape_markdown(event.headline), CONTENT_LIMIT),
        "username": truncate(username, 80),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    }


class DiscordNotifier(WebhookNotifier):
    name = "discord"
    settings: DiscordSettings
    url_variable = DISCORD_WEBHOOK_VAR

    def __init__(self, settings: DiscordSettings) -> None:
        super().__init__(settings)
        #: Monotonic time before which the webhook's rate-limit bucket is empty.
        self._bucket_refills = 0.0
        self._lock = threading.Lock()

    def _send(self, event: Event, deadline: float | None) -> Delivery:
        url = self.settings.webhook_url
        if url is None:
            return Delivery.skipped(self.name, "no webhook URL")
        with self._lock:
            wait = self._bucket_refills - time.monotonic()
        if wait > 0:
            if deadline is not None and time.monotonic() + wait >= deadline:
                return Delivery.failed(
                    self.name,
                    f"rate limit: the webhook's bucket refills in {wait:.3g}s",
                    transient=True,
                    retry_after=wait,
                )
            time.sleep(wait)
        params = {"wait": "true"}
        if self.settings.thread_id:
            params["thread_id"] = self.settings.thread_id
        return post_json(
            self.name,
            url.reveal(),
            build_payload(event, self.settings.username),
            headers={"User-Agent": "skyguard"},
            timeouts=self.settings.timeouts,
            deadline=deadline,
            params=params,
            answer=self._answer,
        )

    def _answer(self, channel: str, response: requests.Response) -> Delivery:
        headers = response.headers
        refill = seconds_from(headers.get("X-RateLimit-Reset-After"))
        if headers.get("X-RateLimit-Remaining") == "0" and refill is not None:
            with self._lock:
                self._bucket_refills = time.monotonic() + refill
        status = response.status_code
        if 200 <= status < 300:
            body = json_body(response) if status == 200 else None
            message_id = body.get("id") if body else None
            if message_id:
                return Delivery.sent(channel, f"message {message_id}")
            return Delivery.failed(
                channel, f"HTTP {status} without the stored message: not known to be sent"
            )
        delivery = delivery_from_response(channel, response)
        if status == 404:
            # Unknown Webhook (10015): deleted, or its channel was.
            return replace(delivery, detail=f"{delivery.detail} (webhook deleted)", gone=True)
        return delivery

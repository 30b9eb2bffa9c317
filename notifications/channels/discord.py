"""Discord: one webhook message with one embed per event.

Limits (Discord's API): content 2000 characters; embed title 256, description
4096, field name 256, field value 1024, footer 2048, all embed text together
6000. Over-long text is cut with a visible marker; a message is never split,
so a chatty failure cannot flood the channel. ``allowed_mentions`` is empty, so
text from a log can never ping ``@everyone`` or a role.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from devops.skypilot.common.lifecycle import Phase
from notifications.http import HttpTimeouts, post_json
from notifications.notifier import Delivery, Event, Notifier, clean_text, format_duration
from notifications.secrets import Secret

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


class DiscordNotifier(Notifier):
    name = "discord"

    def __init__(self, settings: DiscordSettings) -> None:
        self.settings = settings

    def missing(self) -> str | None:
        if self.settings.webhook_url is None:
            return "no webhook URL (set SKYGUARD_DISCORD_WEBHOOK_URL)"
        return None

    def secrets(self) -> tuple[str, ...]:
        url = self.settings.webhook_url
        return () if url is None else (url.reveal(),)

    def _send(self, event: Event, deadline: float | None) -> Delivery:
        url = self.settings.webhook_url
        if url is None:
            return Delivery.skipped(self.name, "no webhook URL")
        return post_json(
            self.name,
            url.reveal(),
            build_payload(event, self.settings.username),
            headers={"User-Agent": "skyguard"},
            timeouts=self.settings.timeouts,
            deadline=deadline,
        )

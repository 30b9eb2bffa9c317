"""A loopback server that answers like Slack's incoming webhooks.

Slack answers in plain text (``text/html``): ``200 ok``; ``400 invalid_payload`` for a
body that is not JSON, ``400 no_text`` for a message with neither text nor blocks,
``400 invalid_blocks`` for blocks outside the Block Kit limits; ``404 no_service`` for
a URL that is not a live webhook; ``429`` with ``Retry-After``.
"""

from __future__ import annotations

import re
from typing import Any

from tests.notifications.notify_fakes import LoopbackServer, Reply, Request, Validator

#: Block Kit limits the fake checks (Slack's Block Kit reference).
MAX_BLOCKS = 50
HEADER_LIMIT = 150
SECTION_TEXT_LIMIT = 3000
MAX_FIELDS = 10
FIELD_LIMIT = 2000
MAX_CONTEXT_ELEMENTS = 10
KNOWN_BLOCKS = {"header", "section", "context", "divider"}
#: In mrkdwn a raw "<" starts a link or mention: only ``<http(s)://...|label>`` is ours.
_BRACKETED = re.compile(r"<[^<>]*>")
_OUR_LINK = re.compile(r"<https?://[^<>|\s]+\|[^<>|]+>")
#: "&" must start an entity.
_BARE_AMPERSAND = re.compile(r"&(?!amp;|lt;|gt;)")


def plain(status: int, text: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, text.encode(), {"Content-Type": "text/html", **(headers or {})})


OK = plain(200, "ok")
NO_SERVICE = plain(404, "no_service")
ARCHIVED = plain(410, "channel_is_archived")


def webhook_url(server: LoopbackServer, token: str) -> str:
    return f"{server.url}/services/T0000SKYG/B0000SKYG/{token}"


def _text_problem(text_object: Any, limit: int) -> str | None:
    if not isinstance(text_object, dict) or text_object.get("type") not in ("plain_text", "mrkdwn"):
        return "text object"
    text = text_object.get("text")
    if not isinstance(text, str) or not text or len(text) > limit:
        return f"text must be 1-{limit} characters"
    if text_object["type"] == "mrkdwn":
        stray = [m for m in _BRACKETED.findall(text) if not _OUR_LINK.fullmatch(m)]
        if stray or "<" in _BRACKETED.sub("", text) or ">" in _BRACKETED.sub("", text):
            return f"unescaped control characters: {stray[:1]}"
        if _BARE_AMPERSAND.search(text):
            return "unescaped &"
    return None


def block_problem(block: Any) -> str | None:
    """Why Slack would refuse this block (``invalid_blocks``), or None."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind not in KNOWN_BLOCKS:
        return f"unknown block type {kind!r}"
    if kind == "header":
        if block["text"].get("type") != "plain_text":
            return "header text must be plain_text"
        return _text_problem(block["text"], HEADER_LIMIT)
    if kind == "section":
        fields = block.get("fields", [])
        if "text" not in block and not fields:
            return "section needs text or fields"
        if len(fields) > MAX_FIELDS:
            return "too many fields"
        problems = [_text_problem(f, FIELD_LIMIT) for f in fields]
        if "text" in block:
            problems.append(_text_problem(block["text"], SECTION_TEXT_LIMIT))
        return next((p for p in problems if p), None)
    if kind == "context":
        elements = block.get("elements", [])
        if not 1 <= len(elements) <= MAX_CONTEXT_ELEMENTS:
            return "context needs 1-10 elements"
        return next((p for p in (_text_problem(e, FIELD_LIMIT) for e in elements) if p), None)
    return None


def slack_validator(token: str) -> Validator:
    def validate(request: Request) -> Reply | None:
        if request.path != f"/services/T0000SKYG/B0000SKYG/{token}":
            return NO_SERVICE
        try:
            message = request.json
        except ValueError:
            return plain(400, "invalid_payload")
        if not isinstance(message, dict):
            return plain(400, "invalid_payload")
        blocks = message.get("blocks")
        if not message.get("text") and not blocks:
            return plain(400, "no_text")
        if blocks is not None:
            if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
                return plain(400, "invalid_blocks")
            if any(block_problem(block) for block in blocks):
                return plain(400, "invalid_blocks")
        return None

    return validate

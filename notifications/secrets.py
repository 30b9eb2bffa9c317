"""Secrets (webhook URLs, tokens) kept out of every text skyguard writes: :class:`Secret`
wraps a value, :class:`Redactor` scrubs it (and its URL-encoded forms) from delivery
details and from urllib3's debug log, which prints request paths."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

REDACTED = "***"


@dataclass(frozen=True, repr=False)
class Secret:
    """A credential. ``repr``/``str`` show ``***``; only :meth:`reveal` gives the value."""

    _value: str

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{REDACTED}')"

    __str__ = __repr__


def secret_fragments(value: str) -> tuple[str, ...]:
    """The forms a secret can show up in: a URL's path, say, appears alone in logs."""
    fragments = {value}
    parts = urlsplit(value)
    if parts.scheme and parts.netloc:
        fragments.add(value.split("://", 1)[1])
        path_query = parts.path + (f"?{parts.query}" if parts.query else "")
        fragments.update({parts.path, path_query})
        fragments.update(segment for segment in parts.path.split("/") if len(segment) >= 16)
    # Short fragments ("/", "") would redact harmless text everywhere.
    return tuple(sorted((f for f in fragments if len(f) >= 8), key=len, reverse=True))


class Redactor:
    """Replaces every known secret (and its URL fragments) in a text with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        fragments: set[str] = set()
        for value in secrets:
            fragments.update(secret_fragments(value))
        self._fragments = tuple(sorted(fragments, key=len, reverse=True))

    @property
    def fragments(self) -> tuple[str, ...]:
        return self._fragments

    def __call__(self, text: str) -> str:
        for fragment in self._fragments:
            text = text.replace(fragment, REDACTED)
        return text

    def __bool__(self) -> bool:
        return bool(self._fragments)


class SecretLogFilter(logging.Filter):
    """Rewrites log records that contain a secret; attached to urllib3's loggers."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redactor(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SecretLogFilter)
            and self.redactor.fragments == other.redactor.fragments
        )

    def __hash__(self) -> int:
        return hash(self.redactor.fragments)


#: urllib3 logs "POST /api/webhooks/<id>/<token>" at DEBUG. Filters on a logger do
#: not apply to records propagated from its children, so each logger is named.
_HTTP_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.poolmanager")


def protect_secrets(redactor: Redactor) -> None:
    """Keep these secrets out of the HTTP stack's logs (idempotent)."""
    if not redactor:
        return
    log_filter = SecretLogFilter(redactor)
    for name in _HTTP_LOGGERS:
        http_logger = logging.getLogger(name)
        if log_filter not in http_logger.filters:
            http_logger.addFilter(log_filter)

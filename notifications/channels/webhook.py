"""What the webhook channels (Discord, Slack) share: the URL is the whole credential.

Whoever holds the URL can post to the channel, so it is the channel's one secret,
and a channel without one says which variable sets it.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from notifications.notifier import Notifier
from notifications.secrets import Secret


class WebhookSettings(Protocol):
    @property
    def webhook_url(self) -> Secret | None: ...


class WebhookNotifier(Notifier):
    #: The environment variable that sets the URL (named when it is missing).
    url_variable: ClassVar[str]

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings

    def missing(self) -> str | None:
        if self.settings.webhook_url is None:
            return f"no webhook URL (set {self.url_variable})"
        return None

    def secrets(self) -> tuple[str, ...]:
        url = self.settings.webhook_url
        return () if url is None else (url.reveal(),)

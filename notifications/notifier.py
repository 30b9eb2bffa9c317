"""The notifier contract: an :class:`Event` goes in, an honest :class:`Delivery` comes out.

A notifier makes one try per :meth:`Notifier.send` call and never raises; the
orchestrator owns retries, concurrency and the deadline. Secrets (webhook URLs,
tokens) are wrapped in :class:`Secret` and scrubbed from every text a delivery
carries, and from urllib3's debug log, which prints request paths (the secret
part of a Discord webhook URL is its path).
"""

from __future__ import annotations

import logging
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import ClassVar

from devops.skypilot.common.lifecycle import Phase
from devops.skypilot.common.termination import TerminationReason
from notifications.secrets import Redactor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Links:
    """Where people can look next; each is optional."""

    #: A command that shows the logs, e.g. ``sky jobs logs 42``.
    log_command: str | None = None
    #: A web page for the job (the SkyPilot dashboard), if configured.
    dashboard_url: str | None = None
    wandb_url: str | None = None
    git_commit: str | None = None

    @property
    def target_url(self) -> str | None:
        """The one URL a status should point to: the dashboard, else the W&B run."""
        return self.dashboard_url or self.wandb_url


class Level(str, Enum):
    """How loud an event is; the orchestrator's routing table picks it."""

    STATUS = "status"
    """Only worth a commit status (a start)."""
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Event:
    """What happened to a job, as people are told about it."""

    job_name: str
    task_id: str
    phase: Phase
    #: None for :attr:`Phase.STARTED`.
    reason: TerminationReason | None = None
    exit_code: int | None = None
    #: Free text, possibly from the job's log: channels escape and truncate it.
    detail: str = ""
    attempt: int = 1
    num_nodes: int = 1
    #: Seconds the attempt ran (0 at start).
    elapsed: float = 0.0
    links: Links = field(default_factory=Links)
    #: The W&B run the job logs to, if any.
    run_id: str | None = None
    level: Level = Level.INFO
    #: Sent by ``skyguard notify --test``: channels mark it and change nothing lasting.
    test: bool = False

    @property
    def headline(self) -> str:
        """One plain line: ``train-7b failed: job_failed (exit 1), attempt 2``."""
        parts = [f"{self.job_name} {self.phase.value}"]
        if self.reason is not None:
            parts.append(f": {self.reason.value}")
        if self.exit_code is not None and self.phase is not Phase.STARTED:
            parts.append(f" (exit {self.exit_code})")
        parts.append(f", attempt {self.attempt}")
        return ("[test] " if self.test else "") + "".join(parts)


def format_duration(seconds: float) -> str:
    """``3723.4`` -> ``1h 02m 03s``; short runs stay short (``42s``)."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


class DeliveryStatus(str, Enum):
    SENT = "sent"
    SKIPPED = "skipped"
    """Not configured, not routed, or already sent: nothing was tried."""
    FAILED = "failed"


@dataclass(frozen=True)
class Delivery:
    """What one channel did with one event. ``detail`` never holds a secret."""

    channel: str
    status: DeliveryStatus
    detail: str = ""
    #: Tries made (0 when skipped).
    attempts: int = 0
    #: A failed try that another try may fix (connection error, 5xx, 429).
    transient: bool = False
    #: Seconds the server asked us to wait before the next try (429).
    retry_after: float | None = None
    #: The endpoint no longer exists (a deleted webhook): not used again for the task.
    gone: bool = False

    @classmethod
    def sent(cls, channel: str, detail: str = "") -> Delivery:
        return cls(channel, DeliveryStatus.SENT, detail, attempts=1)

    @classmethod
    def skipped(cls, channel: str, detail: str) -> Delivery:
        return cls(channel, DeliveryStatus.SKIPPED, detail)

    @classmethod
    def failed(
        cls,
        channel: str,
        detail: str,
        *,
        transient: bool = False,
        retry_after: float | None = None,
        gone: bool = False,
    ) -> Delivery:
        return cls(
            channel,
            DeliveryStatus.FAILED,
            detail,
            attempts=1,
            transient=transient,
            retry_after=retry_after,
            gone=gone,
        )

    @property
    def ok(self) -> bool:
        return self.status is DeliveryStatus.SENT

    def line(self) -> str:
        """``discord: failed: HTTP 500 (3 tries)``."""
        text = f"{self.channel}: {self.status.value}"
        if self.detail:
            text += f": {self.detail}"
        if self.attempts > 1:
            text += f" ({self.attempts} tries)"
        return text


class Notifier(ABC):
    """One channel. :meth:`send` makes one try and never raises."""

    #: Channel name used in routing tables, config and reports.
    name: ClassVar[str]

    @abstractmethod
    def missing(self) -> str | None:
        """What keeps this channel from sending (``"no webhook URL"``), or None when ready."""

    @property
    def enabled(self) -> bool:
        return self.missing() is None

    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in any output (revealed only to scrub them)."""
        return ()

    def warm_up(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Called when the job starts: load slow dependencies now, not at the job's exit."""

    @abstractmethod
    def _send(self, event: Event, deadline: float | None) -> Delivery:
        """Make one try; may raise, :meth:`send` turns that into a failed delivery."""

    def send(self, event: Event, *, deadline: float | None = None) -> Delivery:
        """One try to deliver ``event`` before the monotonic ``deadline``; never raises."""
        redactor = Redactor(self.secrets())
        try:
            why_not = self.missing()
            if why_not is not None:
                delivery = Delivery.skipped(self.name, why_not)
            elif deadline is not None and time.monotonic() >= deadline:
                delivery = Delivery.failed(self.name, "deadline passed before the try")
            else:
                delivery = self._send(event, deadline)
        except Exception as exc:  # a notifier bug must never reach the runner
            message = " ".join(redactor(f"{type(exc).__name__}: {exc}").split())
            logger.warning("%s notifier raised %s", self.name, message)
            delivery = Delivery.failed(self.name, f"unexpected error: {message[:MAX_ERROR_TEXT]}")
        return replace(delivery, detail=redactor(delivery.detail))


#: How much of a server's error message a delivery keeps.
MAX_ERROR_TEXT = 200


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Drop control characters (ANSI colour codes from logs) that render as garbage."""
    return _CONTROL.sub("", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text))

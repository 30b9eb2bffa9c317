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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from devops.skypilot.lifecycle import Phase
from devops.skypilot.termination import TerminationReason

if TYPE_CHECKING:  # requests costs the runner's start-up ~0.1 s: loaded on first send
    import requests

logger = logging.getLogger(__name__)

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
    ) -> Delivery:
        return cls(
            channel,
            DeliveryStatus.FAILED,
            detail,
            attempts=1,
            transient=transient,
            retry_after=retry_after,
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


# --- HTTP, shared by the webhook-style channels -------------------------------------------


@dataclass(frozen=True)
class HttpTimeouts:
    """requests' (connect, read) timeouts; a deadline shortens them."""

    connect: float = 3.05
    read: float = 10.0

    def within(self, deadline: float | None) -> tuple[float, float]:
        if deadline is None:
            return self.connect, self.read
        left = max(0.001, deadline - time.monotonic())
        return min(self.connect, left), min(self.read, left)


#: Statuses another try may fix besides 5xx: rate limits and request timeouts.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
#: How much of a server's error message a delivery keeps.
MAX_ERROR_TEXT = 200


def post_json(
    channel: str,
    url: str,
    payload: Mapping[str, Any],
    *,
    headers: Mapping[str, str],
    timeouts: HttpTimeouts,
    deadline: float | None,
) -> Delivery:
    """POST ``payload`` as JSON and say how it went: sent, transient failure or final one."""
    import requests

    try:
        response = requests.post(
            url,
            json=payload,
            headers=dict(headers),
            timeout=timeouts.within(deadline),
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        return delivery_from_error(channel, exc)
    with response:
        return delivery_from_response(channel, response)


def _json_body(response: requests.Response) -> Mapping[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, Mapping) else None


def retry_after(response: requests.Response) -> float | None:
    """Seconds to wait: Discord's JSON ``retry_after``, else the ``Retry-After`` header."""
    body = _json_body(response)
    candidates: list[object] = [body.get("retry_after") if body else None]
    candidates.append(response.headers.get("Retry-After"))
    for value in candidates:
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if seconds >= 0:
            return seconds
    return None


def describe_response(response: requests.Response) -> str:
    """``HTTP 422: No commit found for SHA`` from the API's JSON ``message``, if any."""
    body = _json_body(response)
    message = body.get("message") if body else None
    text = f"HTTP {response.status_code}"
    if isinstance(message, str) and message.strip():
        text += ": " + " ".join(message.split())[:MAX_ERROR_TEXT]
    return text


def is_transient(response: requests.Response) -> bool:
    status = response.status_code
    if status >= 500 or status in TRANSIENT_STATUSES:
        return True
    # GitHub answers its secondary rate limit with 403 and a Retry-After header.
    return status == 403 and (
        "Retry-After" in response.headers or response.headers.get("X-RateLimit-Remaining") == "0"
    )


def delivery_from_response(channel: str, response: requests.Response) -> Delivery:
    """Turn an HTTP answer into a delivery: 2xx sent, 429/5xx transient, other 4xx final."""
    if 200 <= response.status_code < 300:
        return Delivery.sent(channel, f"HTTP {response.status_code}")
    transient = is_transient(response)
    return Delivery.failed(
        channel,
        describe_response(response),
        transient=transient,
        retry_after=retry_after(response) if transient else None,
    )


def describe_request_error(exc: requests.RequestException) -> str:
    """A safe one-liner; requests' own messages quote the URL, so they are not used."""
    import requests

    if isinstance(exc, requests.ConnectTimeout):
        kind = "connect timed out"
    elif isinstance(exc, requests.Timeout):
        kind = "no answer in time (read timeout)"
    elif isinstance(exc, requests.ConnectionError):
        kind = "connection failed"
    else:
        kind = type(exc).__name__
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return f"{kind}: {cause.strerror}"
        cause = cause.__cause__ or cause.__context__
    return kind


def delivery_from_error(channel: str, exc: requests.RequestException) -> Delivery:
    """Network errors are worth another try; a request we could not even build is not."""
    import requests

    transient = isinstance(exc, requests.ConnectionError | requests.Timeout)
    return Delivery.failed(channel, describe_request_error(exc), transient=transient)


def is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Drop control characters (ANSI colour codes from logs) that render as garbage."""
    return _CONTROL.sub("", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text))

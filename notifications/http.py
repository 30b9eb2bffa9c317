"""HTTP for the webhook-style channels: one POST (following same-host redirects when asked),
its answer turned into a :class:`Delivery` (transient or not, how long to wait before the
next try), request errors described without the URL."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from notifications.notifier import MAX_ERROR_TEXT, Delivery, clean_text

if TYPE_CHECKING:  # requests costs the runner's start-up ~0.1 s: loaded on first send
    import requests

#: Reads a channel's answer; channels whose APIs say more than the status code bring their own.
Answer = Callable[[str, "requests.Response"], Delivery]


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
#: Redirects that keep the method and body when followed (as a re-POST).
REDIRECTS = frozenset({301, 302, 307, 308})


def post_json(
    channel: str,
    url: str,
    payload: Mapping[str, Any],
    *,
    headers: Mapping[str, str],
    timeouts: HttpTimeouts,
    deadline: float | None,
    params: Mapping[str, str] | None = None,
    answer: Answer | None = None,
    redirects: int = 0,
) -> Delivery:
    """POST ``payload`` as JSON and say how it went: sent, transient failure or final one.

    Up to ``redirects`` redirects to the same scheme and host are followed by POSTing
    the same body again; one to another host is refused, since the headers carry a token.
    """
    import requests

    read = answer or delivery_from_response
    target, query = url, dict(params) if params else None
    for hop in range(redirects + 1):
        try:
            response = requests.post(
                target,
                json=payload,
                headers=dict(headers),
                params=query,
                timeout=timeouts.within(deadline),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            return delivery_from_error(channel, exc)
        with response:
            location = response.headers.get("Location")
            if response.status_code not in REDIRECTS or hop == redirects or not location:
                return read(channel, response)
            following = urljoin(response.url, location)
            if not same_origin(target, following):
                return Delivery.failed(
                    channel,
                    f"HTTP {response.status_code}: redirected to another host, not followed",
                )
            # The new location carries its own query string.
            target, query = following, None
    raise AssertionError("unreachable: the last hop always returns")


def same_origin(first: str, second: str) -> bool:
    a, b = urlsplit(first), urlsplit(second)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def json_body(response: requests.Response) -> Mapping[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, Mapping) else None


def seconds_from(value: object) -> float | None:
    """A delay in seconds (``"1.5"``) or an HTTP date, as seconds from now; None if neither."""
    if value is None:
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        try:
            when = parsedate_to_datetime(str(value))
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
        return max(0.0, seconds)
    return seconds if seconds >= 0 else None


def retry_after(response: requests.Response) -> float | None:
    """Seconds to wait: Discord's JSON ``retry_after``, else its ``X-RateLimit-Reset-After``,
    else the standard ``Retry-After`` header (seconds or an HTTP date)."""
    body = json_body(response)
    for value in (
        body.get("retry_after") if body else None,
        response.headers.get("X-RateLimit-Reset-After"),
        response.headers.get("Retry-After"),
    ):
        seconds = seconds_from(value)
        if seconds is not None:
            return seconds
    return None


def _one_line(text: str) -> str:
    return " ".join(clean_text(text).split())


def _error_messages(errors: object) -> list[str]:
    """GitHub's ``errors`` array: each item's ``message``, else ``field code``, else the string."""
    if not isinstance(errors, list):
        return []
    found = []
    for item in errors:
        if isinstance(item, Mapping):
            text = item.get("message") or " ".join(
                str(item[k]) for k in ("field", "code") if item.get(k)
            )
        else:
            text = item
        if isinstance(text, str) and text.strip():
            found.append(_one_line(text))
    return found


def describe_response(response: requests.Response) -> str:
    """``HTTP 422: Validation Failed: context is too long`` from the API's JSON ``message``
    and its ``errors[].message`` (GitHub puts the actual reason there), or a plain-text body."""
    text = f"HTTP {response.status_code}"
    body = json_body(response)
    if body is None:
        # Slack's webhooks answer with a plain word (``no_service``); an HTML page says nothing.
        plain = _one_line(response.text)
        if (
            plain
            and not plain.startswith("<")
            and "json" not in response.headers.get("Content-Type", "")
        ):
            return f"{text}: {plain[:MAX_ERROR_TEXT]}"
        return text
    message = body.get("message")
    parts = [_one_line(message)] if isinstance(message, str) and message.strip() else []
    parts += [m for m in _error_messages(body.get("errors")) if m not in parts]
    if parts:
        text += ": " + ": ".join(parts)[:MAX_ERROR_TEXT]
    return text


def is_transient(response: requests.Response) -> bool:
    return response.status_code >= 500 or response.status_code in TRANSIENT_STATUSES


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

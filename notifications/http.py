"""HTTP for the webhook-style channels: one POST, its answer turned into a :class:`Delivery`
(transient or not, ``Retry-After`` kept), request errors described without the URL."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from notifications.notifier import MAX_ERROR_TEXT, Delivery

if TYPE_CHECKING:  # requests costs the runner's start-up ~0.1 s: loaded on first send
    import requests


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

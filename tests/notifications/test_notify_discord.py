"""Discord: message limits, markdown safety and the webhook API's answers, over real HTTP."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import pytest

from devops.skypilot.common.lifecycle import Phase
from notifications.channels.discord import (
    PHASE_COLOURS,
    TRUNCATED,
    DiscordNotifier,
    DiscordSettings,
    build_payload,
    escape_markdown,
    truncate,
)
from notifications.http import HttpTimeouts
from notifications.notifier import DeliveryStatus, Links
from notifications.orchestrator import Orchestrator, RetrySettings
from notifications.secrets import Secret
from tests.notifications.notify_fakes import (
    LoopbackServer,
    RecordedSleep,
    Reply,
    Request,
    discord_ok,
    discord_validate,
    make_event,
    webhook_url,
)

Serve = Callable[..., LoopbackServer]
SPECIALS = "\\*_~`|>#-[]()<"


def notifier(server: LoopbackServer, token: str, read: float = 10.0) -> DiscordNotifier:
    return DiscordNotifier(
        DiscordSettings(Secret(webhook_url(server, token)), timeouts=HttpTimeouts(2.0, read))
    )


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def test_escape_markdown_neutralises_every_special_and_loses_nothing() -> None:
    raw = "**bold** @everyone [click](http://evil) `x` > q\n# h\n- l ||spoil|| ~~s~~ _i_ <@&1> \\"
    escaped = escape_markdown(raw)
    assert unescape(escaped) == raw
    # Once the escaped pairs are gone, no markdown character is left bare.
    bare = re.sub(r"\\.", "", escaped)
    assert not set(bare) & set(SPECIALS), bare
    assert "[click](" not in escaped


def test_escape_drops_terminal_control_sequences() -> None:
    assert escape_markdown("\x1b[31mCUDA error\x1b[0m\x07") == "CUDA error"


def test_truncate_marks_the_cut_and_never_leaves_a_lone_backslash() -> None:
    assert truncate("short", 10) == "short"
    cut = truncate("x" * 50, 20)
    assert len(cut) == 20 and cut.endswith(TRUNCATED)
    escaped = escape_markdown("*" * 100)  # "\*\*..." pairs
    for limit in range(len(TRUNCATED) + 1, 60):
        result = truncate(escaped, limit)
        body = result[: -len(TRUNCATED)]
        assert len(result) <= limit
        assert (len(body) - len(body.rstrip("\\"))) % 2 == 0, limit


def test_payload_stays_within_every_limit_with_huge_inputs() -> None:
    """A giant log excerpt, job name and links still make one valid message."""
    event = make_event(
        job_name="j" * 1000,
        task_id="t" * 5000,
        detail=("@everyone **boom** " * 4000),
        links=Links(
            log_command="sky jobs logs " + "9" * 3000,
            dashboard_url="https://dash.example/" + "d" * 3000,
            wandb_url="https://wandb.ai/e/p/runs/" + "w" * 3000,
            git_commit="b" * 40,
        ),
    )
    payload = build_payload(event)
    request = Request("POST", "/", {}, json.dumps(payload).encode(), 0.0)
    assert discord_validate(request) is None
    (embed,) = payload["embeds"]
    assert embed["description"].endswith(TRUNCATED)
    assert payload["allowed_mentions"] == {"parse": []}
    assert "@everyone \\*\\*boom" in embed["description"]


def test_fields_carry_reason_attempt_runtime_exit_code_and_links() -> None:
    payload = build_payload(make_event())
    (embed,) = payload["embeds"]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Reason"] == "`job_failed`"
    assert fields["Exit code"] == "1"
    assert fields["Attempt"] == "2"
    assert fields["Runtime"] == "1h 02m 03s"
    assert fields["Logs"] == "`sky jobs logs 42`"
    assert fields["Commit"] == "`" + "a" * 12 + "`"
    assert embed["color"] == PHASE_COLOURS[Phase.FAILED]
    assert "train\\-7b" in embed["title"] and "failed" in embed["title"]


def test_every_phase_has_its_own_colour() -> None:
    assert set(PHASE_COLOURS) == set(Phase)
    assert len(set(PHASE_COLOURS.values())) == len(Phase)


def test_the_stored_message_counts_as_sent(serve: Serve, webhook_token: str) -> None:
    server = serve([discord_ok], discord_validate)
    delivery = notifier(server, webhook_token).send(make_event())
    assert delivery.status is DeliveryStatus.SENT, delivery
    (request,) = server.requests
    path, _, query = request.path.partition("?")
    assert path.endswith(webhook_token) and query == "wait=true"
    assert request.json["embeds"][0]["color"] == PHASE_COLOURS[Phase.FAILED]
    assert re.fullmatch(r"message \d+", delivery.detail)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(204),
        Reply(200, b"{not json", {"Content-Type": "application/json"}),
        Reply(200, {"code": 0}),
    ],
)
def test_an_answer_without_the_message_is_not_counted_as_sent(
    serve: Serve, webhook_token: str, reply: Reply
) -> None:
    """A 204 (or a 200 without a message) does not prove Discord stored the message."""
    server = serve([reply])
    (delivery,) = Orchestrator([notifier(server, webhook_token)], sleep=RecordedSleep()).deliver(
        make_event()
    )
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.detail.endswith("without the stored message: not known to be sent")
    assert len(server.requests) == 1


def test_bad_request_is_final_and_reported(serve: Serve, webhook_token: str) -> None:
    server = serve([Reply(400, {"code": 50035, "message": "Invalid Form Body"})])
    sleep = RecordedSleep()
    (delivery,) = Orchestrator([notifier(server, webhook_token)], sleep=sleep).deliver(make_event())
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.detail == "HTTP 400: Invalid Form Body"
    assert delivery.attempts == 1 and len(server.requests) == 1 and sleep.waits == []


def test_429_waits_the_json_retry_after(serve: Serve, webhook_token: str) -> None:
    limited = Reply(
        429,
        {"message": "You are being rate limited.", "retry_after": 0.25, "global": False},
        {"Retry-After": "1"},
    )
    server = serve([limited, discord_ok])
    sleep = RecordedSleep()
    (delivery,) = Orchestrator([notifier(server, webhook_token)], sleep=sleep).deliver(make_event())
    assert delivery.ok and delivery.attempts == 2
    assert sleep.waits == [0.25]


def test_429_with_malformed_json_falls_back_to_the_header(serve: Serve, webhook_token: str) -> None:
    server = serve([Reply(429, b"<html>rate limited</html>", {"Retry-After": "1"}), discord_ok])
    sleep = RecordedSleep()
    (delivery,) = Orchestrator([notifier(server, webhook_token)], sleep=sleep).deliver(make_event())
    assert delivery.ok and sleep.waits == [1.0]


def test_429_retry_after_is_really_waited(serve: Serve, webhook_token: str) -> None:
    """With the real sleep, the second try arrives no sooner than retry_after."""
    server = serve([Reply(429, {"retry_after": 0.3, "global": False}), discord_ok])
    (delivery,) = Orchestrator([notifier(server, webhook_token)]).deliver(make_event())
    assert delivery.ok
    first, second = server.requests
    assert second.at - first.at >= 0.3


def test_500_then_200_is_sent_on_the_second_try(serve: Serve, webhook_token: str) -> None:
    server = serve([Reply(500, {"message": "oops"}), Reply(200, {"id": "1"})])
    (delivery,) = Orchestrator([notifier(server, webhook_token)], sleep=RecordedSleep()).deliver(
        make_event()
    )
    assert delivery.ok and delivery.attempts == 2 and len(server.requests) == 2


def test_slow_beyond_the_deadline_fails_in_about_the_deadline(
    serve: Serve, webhook_token: str
) -> None:
    server = serve([Reply(204, delay=30.0)])
    orchestrator = Orchestrator(
        [notifier(server, webhook_token, read=30.0)],
        deadline=1.0,
        retry=RetrySettings(tries=3),
    )
    start = time.monotonic()
    (delivery,) = orchestrator.deliver(make_event())
    elapsed = time.monotonic() - start
    assert delivery.status is DeliveryStatus.FAILED
    # Tries x read timeout would be 90 s; a generous guard against hanging.
    assert elapsed < 10.0
    assert len(server.requests) == 1

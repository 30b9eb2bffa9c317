"""Slack: Block Kit within Slack's limits, mrkdwn escaping, the webhook's plain-text
answers, and a webhook URL that never shows up anywhere; over real HTTP."""

from __future__ import annotations

import html
import json
import logging
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from devops.skypilot.common.lifecycle import Phase
from devops.skypilot.common.termination import TerminationReason
from notifications.channels.slack import (
    TEXT_LIMIT,
    TRUNCATED,
    SlackNotifier,
    SlackSettings,
    build_payload,
    escape_mrkdwn,
    truncate,
)
from notifications.config import ConfigError, NotificationConfig
from notifications.http import HttpTimeouts
from notifications.notifier import Delivery, DeliveryStatus, Event, Links
from notifications.orchestrator import Orchestrator, route
from notifications.secrets import Secret
from tests.conftest import PYTHON, REPO, SkyguardRunner
from tests.notifications import slack_fake
from tests.notifications.notify_fakes import (
    LoopbackServer,
    RecordedSleep,
    Reply,
    Request,
    make_event,
)

Serve = Callable[..., LoopbackServer]
HOSTILE = "<!channel> <@U024BE7LH> <https://evil.example|click> & *bold* _it_ ~s~ ``` `x` >q"


def notifier(server: LoopbackServer, token: str) -> SlackNotifier:
    url = slack_fake.webhook_url(server, token)
    return SlackNotifier(SlackSettings(Secret(url), HttpTimeouts(2.0, 5.0)))


def deliver(
    server: LoopbackServer, token: str, event: Event | None = None, deadline: float = 20.0
) -> tuple[Delivery, RecordedSleep]:
    sleep = RecordedSleep()
    orchestrator = Orchestrator([notifier(server, token)], deadline=deadline, sleep=sleep)
    (delivery,) = orchestrator.deliver(event or make_event())
    return delivery, sleep


def detail_block(payload: dict[str, object]) -> str:
    blocks = payload["blocks"]
    assert isinstance(blocks, list)
    (text,) = [b["text"]["text"] for b in blocks if b["type"] == "section" and "text" in b]
    return str(text)


# --- the message -------------------------------------------------------------------------------


def test_log_text_cannot_link_mention_or_format() -> None:
    payload = build_payload(make_event(detail=HOSTILE, job_name="train <!here> & co"))
    text = detail_block(payload)
    assert text.startswith("```") and text.endswith("```")
    body = text[3:-3]
    # Nothing inside can end the code block, and no bracket or bare & is left.
    assert "```" not in body and not set(body) & {"<", ">"}
    assert not re.search(r"&(?!amp;|lt;|gt;)", body)
    assert html.unescape(body.replace("\u200b", "")) == HOSTILE
    assert "&lt;!here&gt; &amp; co" in str(payload["text"])
    for block in payload["blocks"]:
        assert slack_fake.block_problem(block) is None, block


def test_mrkdwn_objects_are_verbatim_and_links_are_safe() -> None:
    links = Links(
        dashboard_url="https://sky.example/jobs?a=1&b=2|x",
        wandb_url="javascript:alert(1)",
        log_command="sky jobs logs 42",
        git_commit="b" * 40,
    )
    payload = build_payload(make_event(links=links))
    (context,) = [b for b in payload["blocks"] if b["type"] == "context"]
    texts = [e["text"] for e in context["elements"]]
    assert "<https://sky.example/jobs?a=1&amp;b=2%7Cx|Dashboard>" in texts
    assert not any("javascript" in t for t in texts)  # only http(s) links
    for block in payload["blocks"]:
        for obj in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if obj and obj["type"] == "mrkdwn":
                assert obj["verbatim"] is True


def test_huge_inputs_stay_within_every_block_kit_limit() -> None:
    event = make_event(
        job_name="j" * 1000,
        task_id="t" * 5000,
        detail="&<>" * 4000,
        links=Links(
            log_command="sky jobs logs " + "9" * 3000,
            dashboard_url="https://dash.example/" + "d" * 3000,
            git_commit="b" * 40,
        ),
    )
    payload = build_payload(event)
    assert (
        slack_fake.slack_validator("t")(
            Request(
                "POST", "/services/T0000SKYG/B0000SKYG/t", {}, json.dumps(payload).encode(), 0.0
            )
        )
        is None
    )
    assert len(payload["text"]) <= TEXT_LIMIT
    assert detail_block(payload).endswith(TRUNCATED + "```")


def test_truncation_never_splits_an_entity() -> None:
    escaped = escape_mrkdwn("&" * 100)
    for limit in range(len(TRUNCATED) + 1, 80):
        cut = truncate(escaped, limit)
        assert len(cut) <= limit
        assert re.fullmatch(r"(&amp;)*" + re.escape(TRUNCATED), cut), cut


def test_the_header_names_the_job_and_phase_in_plain_text() -> None:
    payload = build_payload(make_event(test=True))
    header = payload["blocks"][0]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert header["text"]["text"].endswith("[test] train-7b: failed")
    fields = {
        f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in payload["blocks"][1]["fields"]
    }
    assert fields["*Reason*"] == "`job_failed`" and fields["*Runtime*"] == "1h 02m 03s"


# --- the webhook's answers ---------------------------------------------------------------------


def test_ok_is_sent(serve: Serve, slack_token: str) -> None:
    server = serve([slack_fake.OK], slack_fake.slack_validator(slack_token))
    delivery, _ = deliver(server, slack_token, make_event(detail=HOSTILE))
    assert delivery.ok and delivery.detail == "HTTP 200 ok"
    (request,) = server.requests
    assert request.json["text"] and request.json["blocks"]
    assert request.headers["Content-Type"] == "application/json"


def test_a_200_without_ok_is_not_sent(serve: Serve, slack_token: str) -> None:
    server = serve([slack_fake.plain(200, "<html>proxy login</html>")])
    delivery, _ = deliver(server, slack_token)
    assert delivery.status is DeliveryStatus.FAILED and "without Slack's ok" in delivery.detail


@pytest.mark.parametrize("error", ["invalid_blocks", "no_text", "invalid_payload"])
def test_a_refused_message_is_final(serve: Serve, slack_token: str, error: str) -> None:
    server = serve([slack_fake.plain(400, error)])
    delivery, sleep = deliver(server, slack_token)
    assert delivery.status is DeliveryStatus.FAILED and delivery.detail == f"HTTP 400: {error}"
    assert len(server.requests) == 1 and sleep.waits == []


def test_the_fake_refuses_what_slack_refuses(serve: Serve, slack_token: str) -> None:
    """The loopback server is strict: a payload Slack would refuse is refused here too."""
    validate = slack_fake.slack_validator(slack_token)
    url = f"/services/T0000SKYG/B0000SKYG/{slack_token}"

    def answer(message: object) -> bytes:
        body = json.dumps(message).encode()
        reply = validate(Request("POST", url, {}, body, 0.0))
        return b"" if reply is None else bytes(reply.body)  # type: ignore[arg-type]

    section = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}
    assert answer({"text": "x", "blocks": [section]}) == b"invalid_blocks"
    raw = {"type": "section", "text": {"type": "mrkdwn", "text": "<!channel> & co"}}
    assert answer({"text": "x", "blocks": [raw]}) == b"invalid_blocks"
    assert answer({"text": "x", "blocks": [{"type": "divider"}] * 51}) == b"invalid_blocks"
    assert answer({"blocks": []}) == b"no_text"
    assert answer({"text": "fine"}) == b""
    wrong = validate(Request("POST", "/services/T0000SKYG/B0000SKYG/nope", {}, b"{}", 0))
    assert wrong is slack_fake.NO_SERVICE


def test_a_429_waits_retry_after(serve: Serve, slack_token: str) -> None:
    limited = slack_fake.plain(429, "rate_limited", {"Retry-After": "2"})
    server = serve([limited, slack_fake.OK], slack_fake.slack_validator(slack_token))
    delivery, sleep = deliver(server, slack_token)
    assert delivery.ok and delivery.attempts == 2 and sleep.waits == [2.0]


def test_a_429_past_the_deadline_fails_at_once(serve: Serve, slack_token: str) -> None:
    limited = slack_fake.plain(429, "rate_limited", {"Retry-After": "30"})
    server = serve([limited, slack_fake.OK])
    delivery, sleep = deliver(server, slack_token, deadline=5.0)
    assert delivery.status is DeliveryStatus.FAILED
    assert (
        delivery.detail == "HTTP 429: rate_limited; the server asked to wait 30s, past the deadline"
    )
    assert len(server.requests) == 1 and sleep.waits == []


def test_a_server_error_is_retried(serve: Serve, slack_token: str) -> None:
    server = serve([slack_fake.plain(500, "rollup_error"), slack_fake.OK])
    delivery, _ = deliver(server, slack_token)
    assert delivery.ok and delivery.attempts == 2


@pytest.mark.parametrize("gone", [slack_fake.NO_SERVICE, slack_fake.ARCHIVED])
def test_a_removed_webhook_is_not_used_again_in_the_task(
    serve: Serve, slack_token: str, tmp_path: Path, gone: Reply
) -> None:
    server = serve([gone, slack_fake.OK])
    orchestrator = Orchestrator([notifier(server, slack_token)], sleep=RecordedSleep())
    (first,) = orchestrator.notify(make_event(), state_dir=tmp_path)
    assert first.gone and first.detail.endswith("(webhook removed or channel gone)")
    cancelled = make_event(phase=Phase.CANCELLED, reason=TerminationReason.SIGNALLED)
    (second,) = orchestrator.notify(cancelled, state_dir=tmp_path)
    assert second.status is DeliveryStatus.SKIPPED and len(server.requests) == 1


def test_slack_hears_what_discord_hears_but_not_the_start() -> None:
    assert "slack" not in route(Phase.STARTED, None)[1]
    for phase, reason in [
        (Phase.FAILED, TerminationReason.JOB_FAILED),
        (Phase.RETRYING, TerminationReason.HEARTBEAT_TIMEOUT),
        (Phase.SUCCEEDED, TerminationReason.COMPLETED),
        (Phase.CANCELLED, TerminationReason.SIGNALLED),
    ]:
        assert {"slack", "discord"} <= route(phase, reason)[1]


# --- the secret --------------------------------------------------------------------------------


def test_the_webhook_url_leaks_nowhere(
    serve: Serve, slack_token: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    servers = [
        serve([slack_fake.OK]),
        serve([slack_fake.plain(404, f"no_service for {slack_token}")]),
        serve([slack_fake.plain(500, "rollup_error")]),
    ]
    deliveries: list[Delivery] = []
    texts: list[str] = []
    for index, server in enumerate(servers):
        env = {"SKYGUARD_SLACK_WEBHOOK_URL": slack_fake.webhook_url(server, slack_token)}
        config = NotificationConfig.from_sources({"channels": ["slack"], "tries": 2}, env)
        orchestrator = config.orchestrator(sleep=RecordedSleep())
        event = make_event(detail=f"the log printed {env['SKYGUARD_SLACK_WEBHOOK_URL']}")
        deliveries += orchestrator.notify(event, state_dir=tmp_path / f"s{index}")
        texts += [repr(config), json.dumps(config.describe())]
    assert [d.status.value for d in deliveries] == ["sent", "failed", "failed"]
    sent_bodies = [r.body.decode() for s in servers for r in s.requests]
    everything = [caplog.text, repr(deliveries), *texts, *sent_bodies]
    everything += [p.read_text() for p in tmp_path.rglob("*") if p.is_file()]
    # urllib3 logged every request, with the path scrubbed.
    posts = [r.getMessage() for r in caplog.records if '"POST ' in r.getMessage()]
    assert len(posts) == 4 and all('"POST *** HTTP/1.1"' in p for p in posts), posts
    for text in everything:
        assert slack_token not in text


def test_a_bad_webhook_url_is_one_line_without_the_value(slack_token: str) -> None:
    with pytest.raises(ConfigError) as raised:
        NotificationConfig.from_sources(
            None, {"SKYGUARD_SLACK_WEBHOOK_URL": f"hooks/{slack_token}"}
        )
    assert str(raised.value) == "SKYGUARD_SLACK_WEBHOOK_URL: expected an http(s) URL"
    with pytest.raises(ConfigError, match="set SKYGUARD_SLACK_WEBHOOK_URL"):
        NotificationConfig.from_sources({"slack_webhook_url": f"https://x/{slack_token}"}, {})


def test_the_dry_run_shows_the_webhook_as_stars(
    skyguard: SkyguardRunner, slack_token: str, tmp_path: Path
) -> None:
    url = f"https://hooks.slack.com/services/T0/B0/{slack_token}"
    process = subprocess.run(
        [
            PYTHON,
            "-m",
            "devops.skypilot",
            "run",
            "--state-dir",
            str(tmp_path / "s"),
            "--dry-run",
            "--",
            PYTHON,
            "-V",
        ],
        env=skyguard.env({"SKYGUARD_SLACK_WEBHOOK_URL": url}),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert process.returncode == 0, process.stderr
    described = json.loads(process.stdout)["notifications"]
    assert described["slack"] == {"webhook_url": "***"}
    assert slack_token not in process.stdout + process.stderr


def test_the_runner_posts_the_end_to_slack(
    skyguard: SkyguardRunner, serve: Serve, slack_token: str, tmp_path: Path
) -> None:
    server = serve([slack_fake.OK], slack_fake.slack_validator(slack_token))
    env = {
        "SKYGUARD_SLACK_WEBHOOK_URL": slack_fake.webhook_url(server, slack_token),
        "SKYGUARD_NOTIFY_DEADLINE": "5",
    }
    state = tmp_path / "state"
    process = subprocess.run(
        [
            PYTHON,
            "-m",
            "devops.skypilot",
            "run",
            "--state-dir",
            str(state),
            "--job-name",
            "llm",
            "--",
            PYTHON,
            "-c",
            "import sys; print('CUDA error: <boom> & more'); sys.exit(3)",
        ],
        env=skyguard.env(env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert process.returncode == 3, process.stderr
    assert "slack: sent: HTTP 200 ok" in process.stderr
    (request,) = server.requests  # the start goes to GitHub only
    assert request.json["blocks"][0]["text"]["text"].endswith("llm: failed")
    leftovers = [p.read_text(errors="replace") for p in state.rglob("*") if p.is_file()]
    for text in [process.stdout, process.stderr, *leftovers]:
        assert slack_token not in text


def test_the_recipe_declares_the_webhook_as_a_secret() -> None:
    import yaml

    recipe = yaml.safe_load((REPO / "recipes" / "job.yaml").read_text())
    assert recipe["secrets"]["SKYGUARD_SLACK_WEBHOOK_URL"] == ""
    assert "SKYGUARD_SLACK_WEBHOOK_URL" not in recipe["envs"]


class Leaky(SlackNotifier):
    """A channel with a bug whose exception quotes its own URL."""

    def _send(self, event: Event, deadline: float | None) -> Delivery:
        assert self.settings.webhook_url is not None
        raise RuntimeError(f"cannot post to {self.settings.webhook_url.reveal()}")


def test_an_exception_quoting_the_webhook_is_scrubbed(
    slack_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"https://hooks.slack.com/services/T0/B0/{slack_token}"
    (delivery,) = Orchestrator([Leaky(SlackSettings(Secret(url)))]).deliver(make_event())
    assert delivery.detail == "unexpected error: RuntimeError: cannot post to ***"
    assert slack_token not in caplog.text

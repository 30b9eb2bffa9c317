"""Two real runners on loopback, two ranks beating on their own on each: a rank of the
worker hangs while its neighbour keeps beating.

The worker's runner names the rank, captures the stacks and reports to the head;
the head's record, its termination line and its notifications (a loopback Discord
and GitHub commit status) must say which node and which rank, and where that rank
hung, apart from the head's own healthy ranks.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator

import pytest

from tests.conftest import REPO
from tests.distributed.runners import PYTHON, RunnerCluster
from tests.notifications.notify_fakes import (
    LoopbackServer,
    Reply,
    discord_ok,
    github_validator,
    webhook_url,
)

LAUNCH = str(REPO / "tests" / "forensics" / "launch.py")
HUNG = REPO / "tests" / "forensics" / "hung.py"
#: Caught 1 s after the rank's last beat; the startup grace covers a loaded machine.
GITHUB_TOKEN = "ghp_" + secrets.token_hex(18)
WATCH = ["--heartbeat-timeout", "1", "--startup-grace", "60", "--forensics-timeout", "3"]


@pytest.fixture
def chat() -> Iterator[LoopbackServer]:
    """A loopback Discord webhook."""
    server = LoopbackServer([discord_ok])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def commit_status() -> Iterator[LoopbackServer]:
    """A loopback GitHub statuses API."""
    server = LoopbackServer([Reply(201, {"id": 1})], github_validator(GITHUB_TOKEN))
    try:
        yield server
    finally:
        server.stop()


def _termination_line(output: str) -> dict[str, object]:
    prefix = "skyguard: termination "
    line = next(line for line in output.splitlines() if line.startswith(prefix))
    data: dict[str, object] = json.loads(line.removeprefix(prefix))
    return data


def _line_of(text: str) -> int:
    lines = HUNG.read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def test_the_head_names_the_node_and_the_rank_that_hung(
    runners: RunnerCluster, chat: LoopbackServer, commit_status: LoopbackServer
) -> None:
    token = "whtok" + secrets.token_hex(24)
    runners.start(
        2,
        {
            0: (WATCH, [PYTHON, LAUNCH, "beating", "beating"]),
            # Global ranks 2 and 3, as torchrun numbers them on the second node.
            1: (WATCH, [PYTHON, LAUNCH, "beating", "sleep"]),
        },
        {
            "SKYGUARD_DISCORD_WEBHOOK_URL": webhook_url(chat, token),
            "GITHUB_TOKEN": GITHUB_TOKEN,
            "SKYGUARD_GITHUB_REPO": "octo/trainer",
            "SKYGUARD_GITHUB_API_URL": commit_status.url,
            "SKYGUARD_GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567",
        },
    )
    codes = runners.wait()
    assert codes == {0: 75, 1: 75}, {rank: runners.output(rank)[-3000:] for rank in codes}

    worker = runners.record(1)
    assert worker["reason"] == "heartbeat_timeout"
    summary = worker["forensics"]["summary"]
    culprit = f"in time.sleep at hung.py:{_line_of('time.sleep(3600)')} (_run_epoch)"
    # Rank 2 was beating: caught anywhere in its loop, so only its name is checked.
    assert re.fullmatch(rf"rank 3 \(pid \d+\) {re.escape(culprit)}; rank 2: .+", summary), summary
    # The rank that stopped while rank 2 kept beating (silent for the timeout, or a
    # check later on a busy machine), then this node's stacks.
    expected = worker["detail"]
    assert re.fullmatch(
        r"no heartbeat from rank 3 for \d+\.\ds \(timeout 1s\); rank 2 still beating; "
        rf"stacks on node 1: {re.escape(summary)}",
        expected,
    ), expected

    head = runners.record(0)
    assert (head["reason"], head["monitor"]) == ("peer_failed", "PeerMonitor")
    # The worker's decision, rank and stacks included, then the head's own ranks,
    # labelled as the head's (healthy, beating: no rank of this node is blamed).
    own = head["forensics"]["summary"]
    assert re.match(r"ranks? [01]\b", own) and not re.search(r"rank [23]\b", own), own
    assert head["detail"] == (
        f"node 1 ended: heartbeat_timeout (exit 75): {expected} [HeartbeatMonitor]; "
        f"stacks on node 0: {own}"
    )
    assert _termination_line(runners.output(0))["detail"] == head["detail"]

    # Only the head notifies; its message names node 1, rank 3 and the line.
    (message,) = (request.json for request in chat.requests)
    text = message["embeds"][0]["description"].replace("\\", "")
    assert text.startswith("node 1 ended: heartbeat_timeout (exit 75): no heartbeat from rank 3 ")
    assert re.search(rf"stacks on node 1: rank 3 \(pid \d+\) {re.escape(culprit)}", text), text
    # The commit status has 140 characters: the stuck node, rank and line go first.
    ended = commit_status.requests[-1].json
    assert ended["description"].endswith(f" - node 1 rank 3 {culprit}"), ended

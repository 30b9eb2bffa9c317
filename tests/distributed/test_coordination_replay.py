"""Fault: coordination messages replayed into a later attempt (issue 13, fault 5).

A recorder on the wire between a worker's runner and the head's runner keeps
what the worker sent in attempt 1, among it its signed end (a crash: a final
exit code). Sent again unchanged to the head of attempt 2, it must be refused,
logged, and change nothing: the healthy head ends the way its own command does.
A request replayed within its own attempt is refused too.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.distributed.proxy import RecordingProxy
from tests.distributed.runners import JOINED, RunnerCluster


def wait_for(path: Path) -> list[str]:
    """A command that runs until ``path`` exists, then exits 0."""
    return ["sh", "-c", f'while [ ! -e "{path}" ]; do sleep 0.05; done']


def replay(port: int, request: bytes) -> bytes:
    """Send recorded bytes unchanged to the head; its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(request)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    return answer


@pytest.fixture
def proxies() -> Iterator[list[RecordingProxy]]:
    started: list[RecordingProxy] = []
    try:
        yield started
    finally:
        for proxy in started:
            proxy.close()


def test_a_recorded_end_replayed_in_a_later_attempt_is_refused(
    runners: RunnerCluster, proxies: list[RecordingProxy], tmp_path: Path
) -> None:
    port = runners.coord_port
    # Attempt 1: the worker reaches the head only through the recorder; once it has,
    # its command crashes.
    proxies.append(first := RecordingProxy(upstream=port))
    through_first = ["--coord-port", str(first.port)]
    crash = ["sh", "-c", f"{wait_for(tmp_path / 'crash')[2]}; exit 3"]
    runners.start(2, {0: ((), wait_for(tmp_path / "never")), 1: (through_first, crash)})
    runners.wait_for_output(1, JOINED)
    (tmp_path / "crash").touch()
    assert runners.wait() == {0: 3, 1: 3}
    assert runners.record(0)["reason"] == "peer_failed"
    recorded_end = first.recorded(b"POST /v1/end")
    assert b'"exit_code": 3' in recorded_end

    # Attempt 2: both nodes healthy; each command runs until the test lets it finish.
    proxies.append(second := RecordingProxy(upstream=port))
    through_second = ["--coord-port", str(second.port)]
    go = tmp_path / "go"
    runners.start(2, {0: ((), wait_for(go)), 1: (through_second, wait_for(go))})
    runners.wait_for_output(1, JOINED)
    assert replay(port, recorded_end).startswith(b"HTTP/1.0 403")
    # Within attempt 2, too, a request counts once: the worker's start, sent again.
    recorded_start = second.recorded(b"POST /v1/start")
    assert replay(port, recorded_start).startswith(b"HTTP/1.0 409")
    go.touch()
    assert runners.wait() == {0: 0, 1: 0}, runners.output(0)[-3000:]
    head = runners.record(0)
    assert (head["reason"], head["exit_code"], head["attempt"]) == ("completed", 0, 2)
    assert [attempt["reason"] for attempt in head["history"]] == ["peer_failed", "completed"]
    log = runners.output(0)
    assert "rejected a message from 127.0.0.1 (403): signed for another attempt" in log
    assert "rejected a message from 127.0.0.1 (409): replayed message" in log

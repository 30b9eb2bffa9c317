"""Fault: slowloris on the coordination endpoint (issue 13, fault 6).

A crowd of unauthenticated connections, each trickling its request a byte at a
time and reconnecting when dropped (more of them than the head keeps waiting),
must cost the head no threads, be dropped at the whole-request deadline, and
leave the workers' long polls alone: a real worker keeps in touch with the head
(or it would call the head unreachable after 5 s) and gets the head's decision.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from devops.skypilot.common.termination import EXIT_RETRY
from devops.skypilot.node.coordination.head import MIN_PENDING
from tests.distributed.test_coordination import Cluster

CROWD = MIN_PENDING + 44
#: Seconds between two bytes of one slow sender.
TRICKLE = 0.25
REQUEST_DEADLINE = 1.0


@dataclass
class Crowd:
    """Slow senders: each connection trickles a request that never ends."""

    port: int
    size: int
    dropped: int = 0
    sockets: list[socket.socket] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        sock.send(b"POST /v1/end HTTP/1.1\r\nX-Slow: ")
        return sock

    def run(self) -> None:
        self.sockets = [self.connect() for _ in range(self.size)]
        while not self.stop.wait(TRICKLE):
            for index, sock in enumerate(self.sockets):
                try:
                    sock.send(b"x")
                except OSError:  # dropped by the head: come back, as an attacker would
                    self.dropped += 1
                    sock.close()
                    with contextlib.suppress(OSError):
                        self.sockets[index] = self.connect()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def cluster(tmp_path: Path, leak_tag: str) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path, leak_tag)
    try:
        yield nodes
    finally:
        nodes.kill_all()


def test_a_slowloris_crowd_holds_no_threads_and_the_decision_gets_through(
    cluster: Cluster,
) -> None:
    options = ("--request-deadline", f"{REQUEST_DEADLINE:g}", "--unreachable-timeout", "5")
    head, worker = cluster.start(2, options=options)
    head_process = psutil.Process(head.process.pid)
    idle_threads = head_process.num_threads()
    crowd = Crowd(cluster.port, CROWD)
    trickler = threading.Thread(target=crowd.run, daemon=True)
    trickler.start()
    try:
        most_threads = idle_threads
        # Past a few deadlines: each slow sender is dropped, comes back, is dropped again.
        until = time.monotonic() + 3 * REQUEST_DEADLINE
        while time.monotonic() < until:
            most_threads = max(most_threads, head_process.num_threads())
            time.sleep(0.05)
        head.end("heartbeat_timeout", EXIT_RETRY, "no heartbeat for 600s")
        verdict = worker.expect("verdict")
    finally:
        crowd.stop.set()
        trickler.join(timeout=10)
        crowd.close()
    assert verdict["detail"].startswith("node 0 ended: heartbeat_timeout"), verdict
    assert most_threads <= idle_threads + 1, f"{most_threads} threads, {idle_threads} idle"
    assert crowd.dropped >= CROWD, f"only {crowd.dropped} of {CROWD} slow senders were dropped"
    assert [node.wait() for node in (head, worker)] == [EXIT_RETRY, EXIT_RETRY]
    head.expect_log(f"no complete request within {REQUEST_DEADLINE:g}s")

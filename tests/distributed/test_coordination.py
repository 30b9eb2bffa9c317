"""One decision for all nodes: real node processes on loopback with fake SkyPilot variables."""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devops.skypilot.common.termination import (
    EXIT_RETRY,
    Outcome,
    TerminationReason,
    decide,
    node_exit_code,
)
from devops.skypilot.node.coordination import coordination_from_env
from devops.skypilot.node.coordination import head as coordination_head
from devops.skypilot.node.coordination import protocol as coordination_protocol
from devops.skypilot.node.coordination.protocol import (
    SECRET_VAR,
    CoordinationConfig,
    CoordinationError,
    NodeEnd,
    coordination_secret,
    hello_target,
    peer_failed_verdict,
    task_token,
)
from devops.skypilot.node.environment import SkyPilotEnv, from_env
from tests.distributed.nodes import Node
from tests.distributed.runners import JOINED
from tests.distributed.wire import Wire, send
from tests.ports import reserve_port

SECRET = "coordination-test-secret-5f1e"
TASK_ID = "sky-managed-coordination-test_0"


@pytest.fixture
def cluster(tmp_path: Path, leak_tag: str) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path, leak_tag)
    try:
        yield nodes
    finally:
        nodes.kill_all()


class Cluster:
    """Starts node processes that share one port and (by default) one secret."""

    def __init__(self, tmp_path: Path, leak_tag: str) -> None:
        self.tmp_path = tmp_path
        self.leak_tag = leak_tag
        self.port = reserve_port()
        self.nodes: list[Node] = []

    def start(
        self,
        num_nodes: int,
        secret: str | None = SECRET,
        ranks: range | None = None,
        *,
        options: tuple[str, ...] = (),
        joined: bool = True,
    ) -> list[Node]:
        """Nodes ``ranks`` (default: all) of a ``num_nodes`` job, each once it has started.

        ``joined``: and each worker once it reached the head, so a test's first move
        never races a worker's first contact.
        """
        env = {SECRET_VAR: secret} if secret is not None else {}
        started = [
            Node(rank, num_nodes, self.port, self.tmp_path, self.leak_tag, env=env, options=options)
            for rank in (ranks if ranks is not None else range(num_nodes))
        ]
        self.nodes += started
        for node in started:
            node.expect("started")
        for node in started:
            if joined and node.rank != 0:
                node.expect_log(JOINED)
        return started

    def kill_all(self) -> None:
        for node in self.nodes:
            node.kill()


def test_a_decision_on_one_node_stops_every_other_node(cluster: Cluster) -> None:
    """A hang seen on node 2 stops nodes 0, 1 and 3 with PEER_FAILED naming node 2 and why."""
    nodes = cluster.start(4)
    nodes[2].end("heartbeat_timeout", EXIT_RETRY, "no heartbeat for 600s")
    for node in (nodes[0], nodes[1], nodes[3]):
        verdict = node.expect("verdict")
        assert verdict["reason"] == "peer_failed"
        assert verdict["detail"].startswith("node 2 ended: heartbeat_timeout (exit 75)")
        assert "no heartbeat for 600s" in verdict["detail"]
    codes = [node.wait() for node in nodes]
    assert codes == [EXIT_RETRY] * 4, "one class of exit code: SkyPilot recovers the job once"
    board = json.loads((nodes[0].state_dir / "coordination.json").read_text())
    assert board["decision"]["node"] == 2
    assert board["started"] == [0, 1, 2, 3]
    assert board["ends"]["2"]["reason"] == "heartbeat_timeout"
    # The head lingers until every worker reported its end: the board holds them all.
    assert set(board["ends"]) == {"0", "1", "2", "3"}
    assert {end["reason"] for node, end in board["ends"].items() if node != "2"} == {"peer_failed"}


def test_a_crash_gives_every_node_the_crash_s_exit_code(cluster: Cluster) -> None:
    """A bug on node 1 (exit 1, not retryable) must not become a 75 elsewhere."""
    nodes = cluster.start(3)
    nodes[1].end("job_failed", 1, "command exited 1")
    for node in (nodes[0], nodes[2]):
        assert "node 1 ended: job_failed (exit 1)" in node.expect("verdict")["detail"]
    assert [node.wait() for node in nodes] == [1, 1, 1]


def test_the_head_s_own_decision_reaches_the_workers(cluster: Cluster) -> None:
    nodes = cluster.start(2)
    nodes[0].end("cuda_error", EXIT_RETRY, "GPU 3: Xid 79 (GPU has fallen off the bus)")
    verdict = nodes[1].expect("verdict")
    assert verdict["detail"].startswith("node 0 ended: cuda_error")
    assert [node.wait() for node in nodes] == [EXIT_RETRY, EXIT_RETRY]


def test_a_head_that_completes_does_not_stop_the_workers(cluster: Cluster) -> None:
    """Success is no decision: a worker still finishing is left alone after the head is gone."""
    nodes = cluster.start(2, options=("--linger", "1"))  # the worker learns it while polling
    nodes[0].end("completed", 0, "command exited 0")
    assert nodes[0].wait() == 0
    time.sleep(1.0 + 1.5 + 1.0)  # past the startup grace and the unreachable timeout
    assert nodes[1].pending() == [], "no verdict for a head that ended well"
    nodes[1].end("completed", 0, "command exited 0")
    assert nodes[1].wait() == 0


def test_a_head_killed_with_sigkill_stops_the_workers(cluster: Cluster) -> None:
    nodes = cluster.start(3, secret=None)  # the derived secret works as well
    nodes[0].process.send_signal(signal.SIGKILL)
    nodes[0].wait()
    for node in nodes[1:]:
        verdict = node.expect("verdict")
        assert verdict["reason"] == "peer_failed"
        assert verdict["detail"].startswith(f"head node 0 (127.0.0.1:{cluster.port}) unreachable")
        assert node.wait() == EXIT_RETRY


def test_a_worker_with_the_wrong_secret_learns_nothing_from_the_head(cluster: Cluster) -> None:
    """Misconfigured secrets are not silent: the worker cannot trust the head and stops."""
    (head,) = cluster.start(2, ranks=range(1))
    (stranger,) = cluster.start(2, secret="not-the-secret", ranks=range(1, 2), joined=False)
    verdict = stranger.expect("verdict")
    assert verdict["reason"] == "peer_failed"
    assert "unreachable" in verdict["detail"] and "401" in verdict["detail"]
    assert head.pending() == [], "the head is not stopped by a sender it cannot authenticate"
    head.expect_log("rejected a message from 127.0.0.1 (401)")


# --------------------------------------------------------------------------- the endpoint


def test_unauthenticated_oversized_and_malformed_messages_are_rejected(cluster: Cluster) -> None:
    # Node 2 never runs: the test speaks for it (a second sender of a running node's
    # numbers would take them from that node).
    head, worker = cluster.start(3, ranks=range(2))
    port = cluster.port
    token = task_token(SECRET.encode(), TASK_ID)
    wire = Wire(port, token, node=2)
    session = wire.join()
    stranger = Wire(port, task_token(b"guessed", TASK_ID), node=2)
    decision = json.dumps(
        {"node": 2, "reason": "heartbeat_timeout", "exit_code": 75, "detail": "forged"}
    ).encode()

    assert send(port, "POST", "/v1/end", decision)[0] == 401  # no signature
    assert stranger.send("POST", "/v1/end", decision, session=session)[0] == 401
    assert stranger.send("GET", hello_target(2))[0] == 401  # a stranger cannot even join
    # A valid signature for another path does not carry over.
    other_path = wire.seal("POST", "/v1/start", decision).headers()
    assert send(port, "POST", "/v1/end", decision, other_path)[0] == 401
    # Nor does a valid signature from a node that signs as another.
    for_node_0 = json.dumps({"node": 0, "reason": "nccl_error", "exit_code": 75}).encode()
    assert wire.send("POST", "/v1/end", for_node_0)[0] == 400
    huge = b"{" + b" " * (1 << 20) + b"}"
    # Refused on its declared length, before a byte of the body is read.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        seal = wire.seal("POST", "/v1/end", huge)
        head_of_request = f"POST /v1/end HTTP/1.0\r\nContent-Length: {len(huge)}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in seal.headers().items()
        )
        raw.sendall(head_of_request.encode() + b"\r\n" + huge[:1000])
        assert raw.recv(100).startswith(b"HTTP/1.0 413")
    for body in (b"{not json", b"[1, 2]", b'{"node": 7, "reason": "heartbeat_timeout"}'):
        assert wire.send("POST", "/v1/end", body)[0] == 400
    bad_reason = json.dumps({"node": 1, "reason": "bored", "exit_code": 75}).encode()
    assert wire.send("POST", "/v1/end", bad_reason)[0] == 400
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01 definitely not http\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.0 400")  # a TLS hello, say: answered, not fatal
    # Nothing of that stopped anyone, and the head still serves signed requests.
    assert head.pending() == [] and worker.pending() == []
    status, body = wire.send("GET", "/v1/state?node=2&wait=0")
    assert status == 200 and json.loads(body)["decision"] is None
    head.expect_log("[10 rejected so far]")  # the log is read on a thread of this process
    log = "".join(head.stderr_lines)
    assert SECRET not in log and token.hex() not in log
    # A real decision still works after all the noise.
    worker.end("heartbeat_timeout", EXIT_RETRY, "no heartbeat")
    assert head.expect("verdict")["detail"].startswith("node 1 ended: heartbeat_timeout")


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        sky = from_env(
            {
                "SKYPILOT_NODE_RANK": "0",
                "SKYPILOT_NUM_NODES": "2",
                "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1",
            }
        )
        with pytest.raises(CoordinationError) as raised:
            coordination_from_env(sky, tmp_path, config=CoordinationConfig(port=port), env={})
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message and "in use" in message and "\n" not in message


def test_a_single_node_needs_no_coordination(tmp_path: Path) -> None:
    assert coordination_from_env(SkyPilotEnv(), tmp_path, env={}) is None


def test_secrets_stay_out_of_reprs_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sky = from_env(
        {
            "SKYPILOT_NODE_RANK": "0",
            "SKYPILOT_NUM_NODES": "2",
            "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1",
            "SKYPILOT_TASK_ID": TASK_ID,
        }
    )
    config = CoordinationConfig(port=reserve_port(), linger=0.1)
    with caplog.at_level(logging.DEBUG):
        built = coordination_from_env(sky, tmp_path, config=config, env={SECRET_VAR: SECRET})
        assert built is not None
        observer, monitor = built
        observer.coordinator.start()
        token = task_token(SECRET.encode(), TASK_ID)
        wire = Wire(config.port, token, node=1)
        wire.join()
        assert wire.send("GET", "/v1/state?node=1&wait=0")[0] == 200
        observer.close()
    texts = [repr(observer), repr(monitor), repr(observer.coordinator), repr(config), caplog.text]
    for text in texts:
        assert SECRET not in text and token.hex() not in text


def test_an_end_before_the_command_started_still_reaches_the_workers(tmp_path: Path) -> None:
    """Max runtime already spent: the runner ends without on_start; the workers must learn it."""
    port = reserve_port()
    base = {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1"}
    secret = {SECRET_VAR: SECRET}
    # The head serves until close(), after report_end's linger: the worker may learn late.
    config = CoordinationConfig(port=port, linger=0.5, unreachable_timeout=30.0)
    head = coordination_from_env(
        from_env({**base, "SKYPILOT_NODE_RANK": "0"}), tmp_path / "0", config=config, env=secret
    )
    worker = coordination_from_env(
        from_env({**base, "SKYPILOT_NODE_RANK": "1"}), tmp_path / "1", config=config, env=secret
    )
    assert head is not None and worker is not None
    try:
        worker[0].coordinator.start()
        spent = NodeEnd(0, TerminationReason.MAX_RUNTIME_REACHED, 124, "max runtime spent")
        head[0].coordinator.report_end(spent)  # returns once the answer is on its way
        deadline = time.monotonic() + 10  # a guard against hanging, not a speed check
        while (verdict := worker[1].check(time.monotonic())) is None:
            assert time.monotonic() < deadline, "the worker never learned the decision"
            time.sleep(0.01)
        assert verdict is not None and verdict.reason is TerminationReason.PEER_FAILED
        assert verdict.detail.startswith("node 0 ended: max_runtime_reached (exit 124)")
        assert worker[0].coordinator.decision == spent
    finally:
        head[0].close()
        worker[0].close()


def test_the_token_is_per_task() -> None:
    assert task_token(b"s", "task-a") != task_token(b"s", "task-b")
    assert task_token(b"s", "task-a") != task_token(b"t", "task-a")
    assert task_token(b"s", "task-a") == task_token(b"s", "task-a")


def test_the_derived_secret_is_shared_by_the_nodes_of_one_allocation() -> None:
    base = {
        "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2",
        "SKYPILOT_TASK_ID": "t",
    }
    head = from_env({**base, "SKYPILOT_NODE_RANK": "0"})
    worker = from_env({**base, "SKYPILOT_NODE_RANK": "1"})
    other = from_env({**base, "SKYPILOT_NODE_RANK": "1", "SKYPILOT_TASK_ID": "u"})
    assert coordination_secret({}, head) == coordination_secret({}, worker)
    assert coordination_secret({}, head)[1] is True
    assert coordination_secret({}, head) != coordination_secret({}, other)
    assert coordination_secret({SECRET_VAR: "x"}, head) == (b"x", False)


# --------------------------------------------------------------------------- pure parts


def test_first_decision_wins_and_successes_decide_nothing() -> None:
    board = coordination_head._Board(4)
    done = NodeEnd(3, TerminationReason.COMPLETED, 0, "command exited 0")
    first = NodeEnd(
        1, TerminationReason.NCCL_ERROR, 75, "Watchdog caught collective operation timeout"
    )
    later = NodeEnd(2, TerminationReason.HEARTBEAT_TIMEOUT, 75, "no heartbeat")
    assert board.end(done) is None
    assert board.end(first) == first
    assert board.end(later) == first
    assert set(board.ends) == {1, 2, 3}
    board.end(NodeEnd(0, TerminationReason.PEER_FAILED, 75, "node 1 ended"))
    assert board.wait_all_ended(0)
    assert not board.settled() and not board.state()["settled"], "the head has not closed"
    board.close()
    assert board.settled() and board.state()["settled"], "the head is done: the barrier opens"


def test_each_request_number_counts_once_and_late_ones_pass_within_the_window() -> None:
    fresh = coordination_head._Freshness()
    assert fresh.admit(1, 2) and fresh.admit(1, 1), "a poll and an end report may cross"
    assert not fresh.admit(1, 2) and not fresh.admit(1, 1)
    assert fresh.admit(1, 100)
    window = coordination_head.REPLAY_WINDOW
    assert not fresh.admit(1, 100 - window), "too old to tell from a replay"
    assert fresh.admit(1, 101 - window) and not fresh.admit(1, 101 - window)
    assert fresh.admit(2, 1), "each node counts its own"


@pytest.mark.parametrize(
    "nonce", ["", "1", "1.", ".1", "a.1", "1.-1", "1.1.1", "1.\u00b2", "1." + "9" * 19]
)
def test_malformed_nonces_are_refused(nonce: str) -> None:
    with pytest.raises(ValueError):
        coordination_protocol.parse_nonce(nonce)


@pytest.mark.parametrize(
    ("peer_code", "runner_signal", "expected"),
    [
        (1, None, 1),  # the peer's own crash: final everywhere
        (124, None, 124),  # max runtime: final everywhere
        (75, None, 75),  # retryable stays retryable
        (1, 15, 75),  # we were cancelled ourselves: our own end
    ],
)
def test_peer_failed_takes_the_originator_s_exit_code(
    peer_code: int, runner_signal: int | None, expected: int
) -> None:
    peer = NodeEnd(1, TerminationReason.JOB_FAILED, peer_code, "command exited")
    verdict = peer_failed_verdict(peer)
    assert verdict.reason is TerminationReason.PEER_FAILED
    outcome = Outcome(child_returncode=-15, verdict=verdict, runner_signal=runner_signal)
    assert decide(outcome).exit_code == expected


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"node": True, "reason": "nccl_error", "exit_code": 75},
        {"node": 2, "reason": "nccl_error", "exit_code": 75},
        {"node": 1, "reason": "nccl_error", "exit_code": 300},
        {"node": 1, "reason": "nccl_error", "exit_code": "75"},
        {"node": 1, "reason": "nccl_error", "exit_code": 75, "detail": 5},
    ],
)
def test_malformed_ends_are_refused(data: object) -> None:
    with pytest.raises(ValueError):
        NodeEnd.from_json(data, num_nodes=2)


def test_an_end_report_always_fits_the_message_limit() -> None:
    end = NodeEnd(1, TerminationReason.CUDA_ERROR, 75, "\u00e9\u4e2d" * 500, "GpuMonitor")
    body = coordination_protocol.fit(end, 4096)
    assert len(body) <= 4096
    assert NodeEnd.from_json(json.loads(body), num_nodes=2).reason is TerminationReason.CUDA_ERROR


def test_long_details_are_truncated() -> None:
    end = NodeEnd.from_json(
        {"node": 0, "reason": "nccl_error", "exit_code": 75, "detail": "x" * 10_000}, num_nodes=1
    )
    assert len(end.detail) == 1000


def test_a_node_whose_own_end_lost_the_race_exits_with_the_decision(tmp_path: Path) -> None:
    """Two nodes end on their own at once: node 0's crash (final) reaches the board
    first, node 1's hang (75) second. Node 1 exits 3 as well: on Slurm srun reports
    the highest code of all nodes, and a 75 anywhere would restart a crashed job."""
    port = reserve_port()
    base = {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1"}
    secret = {SECRET_VAR: SECRET}
    config = CoordinationConfig(port=port, linger=60.0, unreachable_timeout=30.0)
    head = coordination_from_env(
        from_env({**base, "SKYPILOT_NODE_RANK": "0"}), tmp_path / "0", config=config, env=secret
    )
    worker = coordination_from_env(
        from_env({**base, "SKYPILOT_NODE_RANK": "1"}), tmp_path / "1", config=config, env=secret
    )
    assert head is not None and worker is not None
    crash = NodeEnd(0, TerminationReason.JOB_FAILED, 3, "command exited 3")
    hang = NodeEnd(1, TerminationReason.HEARTBEAT_TIMEOUT, EXIT_RETRY, "no heartbeat")
    answers: dict[str, NodeEnd | None] = {}
    try:
        head[0].coordinator.start()
        worker[0].coordinator.start()
        # The head waits at the exit barrier until the worker's end is in.
        waiting = threading.Thread(
            target=lambda: answers.update(head=head[0].coordinator.report_end(crash))
        )
        waiting.start()
        deadline = time.monotonic() + 10  # a guard against hanging, not a speed check
        while head[0].coordinator.decision is None:
            assert time.monotonic() < deadline, "the head never took its own end"
            time.sleep(0.01)
        assert waiting.is_alive(), "the head left the barrier before the worker ended"
        reporting = threading.Thread(
            target=lambda: answers.update(worker=worker[0].coordinator.report_end(hang))
        )
        reporting.start()
        waiting.join(timeout=10)
        assert not waiting.is_alive(), "every node ended: the head's wait is over"
        assert reporting.is_alive(), "the worker waits at the barrier until the head is done"
        head[0].close()  # the head has notified: the barrier opens
        # A guard against hanging, not a speed check; below the worker's request timeout
        # (a 10 s poll + 2 s): a poll the stopping head left unanswered would trip it.
        reporting.join(timeout=10)
        assert not reporting.is_alive()
        worker[0].job_decision = answers["worker"]
        assert answers["head"] == crash and worker[0].job_decision == crash
        assert worker[0].exit_code(EXIT_RETRY) == 3
        assert worker[0].exit_code(0) == 0, "a node that ended well lowers nothing"
    finally:
        head[0].close()
        worker[0].close()


def test_a_node_s_exit_code_is_the_decision_s() -> None:
    assert node_exit_code(EXIT_RETRY, 3) == 3
    assert node_exit_code(1, EXIT_RETRY) == EXIT_RETRY
    assert node_exit_code(0, EXIT_RETRY) == 0
    assert node_exit_code(EXIT_RETRY, None) == EXIT_RETRY

"""Real runners on loopback, one per fake node: a hang, a crash, a head killed with SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import psutil

from tests.distributed.runners import CHILDREN, JOINED, PYTHON, SLEEP, RunnerCluster


def test_a_hang_on_one_node_stops_every_node_with_its_reason(runners: RunnerCluster) -> None:
    hang = (["--heartbeat-timeout", "2"], SLEEP)  # never beats
    runners.start(4, {2: hang})
    codes = runners.wait()
    assert codes == {0: 75, 1: 75, 2: 75, 3: 75}, {r: runners.output(r)[-2000:] for r in codes}
    assert runners.record(2)["reason"] == "heartbeat_timeout"
    for rank in (0, 1, 3):
        record = runners.record(rank)
        assert record["reason"] == "peer_failed"
        assert record["monitor"] == "PeerMonitor"
        assert record["detail"].startswith("node 2 ended: heartbeat_timeout (exit 75)")
    board = json.loads((runners.state_root / "node-0" / "coordination.json").read_text())
    assert board["decision"]["node"] == 2


def test_a_crash_on_one_node_stops_the_others_naming_it(runners: RunnerCluster) -> None:
    crash = ((), [PYTHON, *CHILDREN, "exit", "3"])
    runners.start(3, {1: crash})
    codes = runners.wait()
    assert codes[1] == 3
    assert runners.record(1)["reason"] == "job_failed"
    for rank in (0, 2):
        assert runners.record(rank)["detail"].startswith("node 1 ended: job_failed (exit 3)")


def test_a_crash_gives_every_node_a_final_exit_code(runners: RunnerCluster) -> None:
    """SkyPilot restarts the job if any node exits 75: a crash must not look retryable."""
    runners.start(3, {1: ((), [PYTHON, *CHILDREN, "exit", "3"])})
    assert runners.wait() == {0: 3, 1: 3, 2: 3}


def test_a_head_killed_with_sigkill_stops_the_workers(runners: RunnerCluster) -> None:
    runners.start(3, {})
    # The kill lands mid-job: every worker has reached the head, the head's command runs.
    for rank in (1, 2):
        runners.wait_for_output(rank, JOINED)
    head = psutil.Process(runners.processes[0].pid)
    commands: list[psutil.Process] = []
    deadline = time.monotonic() + 30  # a guard against hanging
    while not commands:
        assert time.monotonic() < deadline, "the head never started its command"
        commands = head.children(recursive=True)
        time.sleep(0.02)
    os.kill(head.pid, signal.SIGKILL)
    for child in commands:  # what SkyPilot's teardown would do to the orphan
        with contextlib.suppress(psutil.Error):
            child.kill()
    codes = runners.wait()
    assert codes[1] == 75 and codes[2] == 75
    for rank in (1, 2):
        detail = runners.record(rank)["detail"]
        assert detail.startswith(f"head node 0 (127.0.0.1:{runners.coord_port}) unreachable")


def test_no_node_exits_before_every_node_ended_and_srun_reads_the_decision(
    runners: RunnerCluster,
) -> None:
    """SkyPilot's Slurm path, as measured with ``srun --kill-on-bad-exit``: the first
    node to exit non-zero has the others SIGTERMed at once, and srun reports the highest
    code of all nodes. Node 1 crashes; node 2 takes 2 s to stop its command. Were node 1
    to exit first, the SIGTERM would reach node 2 mid-stop; here nobody exits until
    every node's end is recorded, and the SIGTERM after the first exit changes nothing."""
    slow_stop = ["bash", "-c", "trap 'sleep 2; exit 0' TERM; sleep 120 & wait"]
    runners.start(3, {1: ((), [PYTHON, *CHILDREN, "exit", "3"]), 2: ((), slow_stop)})
    codes: dict[int, int] = {}
    deadline = time.monotonic() + 90  # a guard against hanging
    while not codes:
        assert time.monotonic() < deadline, "no node ever exited"
        codes = {r: p.returncode for r, p in runners.processes.items() if p.poll() is not None}
        time.sleep(0.01)
    ended = {r: (runners.state_dir(r) / "termination.json").is_file() for r in range(3)}
    assert all(ended.values()), f"node(s) exited {codes} while others were still ending: {ended}"
    # slurmstepd's step cancel: SIGTERM to every process of the nodes still running.
    for process in runners.processes.values():
        if process.poll() is None:
            with contextlib.suppress(psutil.Error):
                tree = psutil.Process(process.pid)
                for member in [tree, *tree.children(recursive=True)]:
                    member.send_signal(signal.SIGTERM)
    codes = runners.wait()
    assert codes == {0: 3, 1: 3, 2: 3}, {r: runners.output(r)[-2000:] for r in codes}
    assert max(codes.values()) == 3, "what srun would report: the crash, not a retry"
    assert runners.record(2)["reason"] == "peer_failed"

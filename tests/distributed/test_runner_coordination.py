"""Real runners on loopback, one per fake node: a hang, a crash, a head killed with SIGKILL.

Each node is a real ``skyguard run`` with fake SkyPilot variables of its rank;
the CLI wires the coordinator in (``devops/skypilot/node/main.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import PYTHON, REPO, TAG_VAR
from tests.distributed.test_coordination import free_port

CHILDREN = ["tests/integration/children.py"]
SLEEP = [PYTHON, *CHILDREN, "sleep", "120"]


class RunnerCluster:
    def __init__(self, tmp_path: Path, leak_tag: str) -> None:
        self.state_root = tmp_path / "state"
        self.leak_tag = leak_tag
        self.coord_port = free_port()
        self.processes: dict[int, subprocess.Popen[str]] = {}

    def start(
        self, num_nodes: int, commands: dict[int, tuple[Sequence[str], Sequence[str]]]
    ) -> None:
        """``commands``: rank -> (runner options, command)."""
        for rank in range(num_nodes):
            options, command = commands.get(rank, ((), SLEEP))
            env = {
                k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "SKYGUARD_"))
            }
            env.update(
                {
                    TAG_VAR: self.leak_tag,
                    "PYTHONPATH": str(REPO),
                    "PYTHONUNBUFFERED": "1",
                    "SKYPILOT_NODE_RANK": str(rank),
                    "SKYPILOT_NUM_NODES": str(num_nodes),
                    "SKYPILOT_NODE_IPS": "\n".join(["127.0.0.1"] * num_nodes),
                    "SKYPILOT_TASK_ID": "sky-managed-runner-coordination_0",
                    "SKYGUARD_COORD_SECRET": "runner-coordination-secret",
                }
            )
            argv = [
                PYTHON,
                "-m",
                "devops.skypilot",
                "run",
                "--coord-port",
                str(self.coord_port),
                "--coord-timeout",
                "2",
                "--state-dir",  # one per node, as recipes/job.yaml does
                str(self.state_root / f"node-{rank}"),
                "--grace",
                "5",
                *options,
                "--",
                *command,
            ]
            self.processes[rank] = subprocess.Popen(
                argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )

    def wait(self, timeout: float = 90.0) -> dict[int, int]:
        return {rank: process.wait(timeout=timeout) for rank, process in self.processes.items()}

    def record(self, rank: int) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.state_root / f"node-{rank}" / "termination.json").read_text()
        )
        return data

    def stderr(self, rank: int) -> str:
        process = self.processes[rank]
        assert process.stderr is not None
        return process.stderr.read()

    def kill_all(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(process.pid).children(recursive=True):
                    child.kill()
            if process.poll() is None:
                process.kill()
            process.communicate()


@pytest.fixture
def runners(tmp_path: Path, leak_tag: str) -> Iterator[RunnerCluster]:
    cluster = RunnerCluster(tmp_path, leak_tag)
    try:
        yield cluster
    finally:
        cluster.kill_all()


def test_a_hang_on_one_node_stops_every_node_with_its_reason(runners: RunnerCluster) -> None:
    hang = (["--heartbeat-timeout", "2"], SLEEP)  # never beats
    runners.start(4, {2: hang})
    codes = runners.wait()
    assert codes == {0: 75, 1: 75, 2: 75, 3: 75}, {r: runners.stderr(r)[-2000:] for r in codes}
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
    head = psutil.Process(runners.processes[0].pid)
    # Wait until the head's command runs, so the kill lands mid-job.
    commands: list[psutil.Process] = []
    for _ in range(600):
        commands = head.children(recursive=True)
        if commands:
            break
        time.sleep(0.05)
    assert commands, "the head never started its command"
    os.kill(head.pid, signal.SIGKILL)
    for child in commands:  # what SkyPilot's teardown would do to the orphan
        with contextlib.suppress(psutil.Error):
            child.kill()
    codes = runners.wait()
    assert codes[1] == 75 and codes[2] == 75
    for rank in (1, 2):
        detail = runners.record(rank)["detail"]
        assert detail.startswith(f"head node 0 (127.0.0.1:{runners.coord_port}) unreachable")

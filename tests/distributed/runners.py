"""Real ``skyguard run`` processes on loopback, one per fake node of a multi-node job.

Each node is a real runner with the fake SkyPilot variables of its rank and a
state dir of its own (as ``recipes/job.yaml`` gives them); the CLI wires the
coordinator in (``devops/skypilot/node/main.py``). Starting the same ranks
again is the job's next attempt.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import PYTHON, REPO, TAG_VAR
from tests.ports import reserve_port

CHILDREN = ["tests/integration/children.py"]
SLEEP = [PYTHON, *CHILDREN, "sleep", "120"]
#: What a worker's runner logs once it reached the head.
JOINED = "coordination: following the head at"


class RunnerCluster:
    def __init__(self, tmp_path: Path, leak_tag: str) -> None:
        self.tmp_path = tmp_path
        self.state_root = tmp_path / "state"
        self.leak_tag = leak_tag
        self.coord_port = reserve_port()
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._logs: dict[int, Path] = {}
        self._started = 0

    def start(
        self,
        num_nodes: int,
        commands: dict[int, tuple[Sequence[str], Sequence[str]]],
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        """``commands``: rank -> (runner options, command); later options win.
        ``extra_env`` goes into every node's environment."""
        self._started += 1
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
                    **(extra_env or {}),
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
                "--state-dir",
                str(self.state_dir(rank)),
                "--grace",
                "5",
                *options,
                "--",
                *command,
            ]
            log = self.tmp_path / f"node-{rank}-start-{self._started}.log"
            with log.open("wb") as out:
                self.processes[rank] = subprocess.Popen(
                    argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
                )
            self._logs[rank] = log

    def state_dir(self, rank: int) -> Path:
        return self.state_root / f"node-{rank}"

    def wait(self, timeout: float = 90.0) -> dict[int, int]:
        return {rank: process.wait(timeout=timeout) for rank, process in self.processes.items()}

    def record(self, rank: int) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir(rank) / "termination.json").read_text())
        return data

    def output(self, rank: int) -> str:
        """What the latest runner of ``rank`` printed (stdout and stderr)."""
        return self._logs[rank].read_text(errors="replace")

    def wait_for_output(self, rank: int, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout  # a guard against hanging, not a speed check
        while text not in self.output(rank):
            process = self.processes[rank]
            assert process.poll() is None, f"node {rank} exited:\n{self.output(rank)[-3000:]}"
            assert time.monotonic() < deadline, f"node {rank} never printed {text!r}"
            time.sleep(0.05)

    def kill_all(self) -> None:
        for process in self.processes.values():
            kill_tree(process)


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process`` and every descendant it still has, and reap it."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
    if process.poll() is None:
        process.kill()
    process.wait()

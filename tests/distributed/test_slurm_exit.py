"""On Slurm only the head exits with the job's code, after the workers' tasks ended
(devops/skypilot/node/coordination/slurm_exit.py): srun then reports that code, never
143 for a task it cancelled.

- the policy and the step's discovery, as tables;
- SkyPilot's own Slurm executor (``python -m sky.skylet.executor.slurm``, the real
  module, as srun starts it) as a worker task under ``proctrack/cgroup``: it holds the
  task after its script exited 0 until the head released it through the done files;
  and two such executors running real runners as their ``run:``, watched like srun;
- real runners on loopback as a three-node Slurm step under ``proctrack/linuxproc``,
  watched the way ``srun --kill-on-bad-exit`` watches its tasks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from devops.skypilot.common.termination import EXIT_RETRY
from devops.skypilot.node.coordination.slurm_exit import (
    PROCTRACK_FILE,
    SlurmStep,
    exit_code_on_slurm,
    wait_for_workers,
)
from tests.conftest import PYTHON, REPO, TAG_VAR, command_line, tagged_processes
from tests.distributed.runners import SLEEP, RunnerCluster, kill_tree
from tests.ports import reserve_port

CGROUP_V2 = "0::/system.slice/slurmstepd.scope/job_4242/step_7/user/task_0\n"
CGROUP_V1 = "12:freezer:/slurm/uid_0/job_4242/step_7/task_0\n11:cpu:/\n"


@pytest.mark.parametrize(
    ("code", "is_head", "decided", "expected"),
    [
        (75, True, True, 75),  # the head carries the job's code
        (1, True, False, 1),
        (75, False, True, 0),  # a worker that knows the decision leaves it to the head
        (125, False, True, 0),
        (75, False, False, 75),  # no decision (head unreachable): its own code stands
        (0, False, True, 0),
    ],
)
def test_only_the_head_carries_the_code(code: int, is_head: bool, decided: bool, expected: int):
    assert exit_code_on_slurm(code, is_head=is_head, decided=decided) == expected


def _home(tmp_path: Path, proctrack: str | None) -> dict[str, str]:
    if proctrack is not None:
        (tmp_path / PROCTRACK_FILE).write_text(f"{proctrack}\n")
    return {"SLURM_JOB_ID": "4242", "HOME": str(tmp_path)}


@pytest.mark.parametrize(
    ("proctrack", "cgroup", "done_dir"),
    [
        ("cgroup", CGROUP_V2, ".sky_run_done_4242_7"),
        ("cgroup", CGROUP_V1, ".sky_run_done_4242_7"),
        (None, CGROUP_V2, ".sky_run_done_4242_7"),  # no file: SkyPilot assumes cgroup
        ("cgroup", "0::/user.slice/session-1.scope\n", None),  # step unknown: the margin
        ("linuxproc", CGROUP_V2, None),
        ("pgid", "", None),
    ],
)
def test_the_step_is_found_where_skypilot_keeps_it(
    tmp_path: Path, proctrack: str | None, cgroup: str, done_dir: str | None
) -> None:
    step = SlurmStep.from_env(_home(tmp_path, proctrack), 1, 2, cgroup_text=cgroup)
    assert step is not None
    assert (step.rank, step.num_nodes) == (1, 2)
    assert step.done_dir == (None if done_dir is None else tmp_path / done_dir)


def test_one_node_or_no_slurm_is_no_step(tmp_path: Path) -> None:
    assert SlurmStep.from_env(_home(tmp_path, "cgroup"), 0, 1, cgroup_text=CGROUP_V2) is None
    env = {"HOME": str(tmp_path), "SLURM_JOB_ID": " "}
    assert SlurmStep.from_env(env, 0, 2, cgroup_text=CGROUP_V2) is None


def _skypilot_task(
    tmp_path: Path, script: str, rank: int = 1, tag: str = "", output: Path | None = None
) -> subprocess.Popen[bytes]:
    """SkyPilot's Slurm executor as srun starts it for ``rank`` of a two-node step."""
    ip = socket.gethostbyname(socket.gethostname())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "SKYGUARD_"))},
        TAG_VAR: tag,
        "HOME": str(tmp_path),
        "SLURM_PROCID": str(rank),
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "7",
        "SLURM_JOB_NODELIST": socket.gethostname(),
    }
    (tmp_path / "logs").mkdir(exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "sky.skylet.executor.slurm",
        f"--script={script}",
        f"--log-dir={tmp_path / 'logs'}",
        "--env-vars={}",
        "--cluster-num-nodes=2",
        f"--cluster-ips={ip},{ip}",
        f"--cluster-home-dir={tmp_path}",
    ]
    if output is None:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with output.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_skypilots_executor_holds_the_worker_until_the_head_releases_it(
    tmp_path: Path, leak_tag: str
) -> None:
    """proctrack/cgroup: the worker's script exits 0 at once, SkyPilot's executor then
    waits for rank 0's done file, which the head writes only after the worker's."""
    step = SlurmStep.from_env(_home(tmp_path, "cgroup"), 0, 2, cgroup_text=CGROUP_V2)
    assert step is not None and step.done_dir is not None
    worker = _skypilot_task(tmp_path, "sleep 1; exit 0", tag=leak_tag)
    try:
        released = wait_for_workers(step, timeout=120)
        # The head returns only once the worker's script ended and it wrote its file.
        assert released
        assert (step.done_dir / "1").is_file() and (step.done_dir / "0").is_file()
        _, stderr = worker.communicate(timeout=60)  # a guard against hanging
        assert worker.returncode == 0, stderr.decode()[-2000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        _reap_skypilots_daemons(leak_tag)


def test_a_worker_that_never_reports_costs_the_head_its_timeout_only(tmp_path: Path) -> None:
    step = SlurmStep.from_env(_home(tmp_path, "cgroup"), 0, 3, cgroup_text=CGROUP_V2)
    assert step is not None and step.done_dir is not None
    (step.done_dir).mkdir()
    (step.done_dir / "2").touch()  # a leftover of an earlier use: cleared, not believed
    slept: list[float] = []
    clock = iter(range(1000))
    assert not wait_for_workers(step, 5, clock=lambda: float(next(clock)), sleep=slept.append)
    assert sorted(path.name for path in step.done_dir.iterdir()) == ["0"]
    assert len(slept) == 5 and slept[-1] > 0.5, slept  # polls until the deadline, then the margin


def _reap_skypilots_daemons(tag: str) -> None:
    """SkyPilot's ``subprocess_daemon`` (one per ``run:``, in a session of its own) kills
    the script's tree once the executor is gone, then exits: wait for that, or kill it
    (anything else left behind is the leak fixture's to report)."""
    deadline = time.monotonic() + 30  # a guard against hanging
    while daemons := [p for p in tagged_processes(tag) if "subprocess_daemon" in command_line(p)]:
        if time.monotonic() > deadline:
            for daemon in daemons:
                with contextlib.suppress(psutil.Error):
                    daemon.kill()
            return
        time.sleep(0.05)


class _Srun(threading.Thread):
    """Watches the nodes' processes as ``srun --kill-on-bad-exit`` watches its tasks: when
    one exits non-zero, every task still running is cancelled (SIGTERM to its tree)."""

    def __init__(self, processes: dict[int, subprocess.Popen[bytes]]) -> None:
        super().__init__(daemon=True)
        self.processes = processes
        #: The ranks still running when a first non-zero exit cancelled them.
        self.cancelled: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 120  # a guard against hanging
        while time.monotonic() < deadline:
            codes = {rank: process.poll() for rank, process in self.processes.items()}
            if any(code not in (None, 0) for code in codes.values()):
                self.cancelled = [rank for rank, code in codes.items() if code is None]
                for rank in self.cancelled:
                    with contextlib.suppress(psutil.Error):
                        tree = psutil.Process(self.processes[rank].pid)
                        for member in [tree, *tree.children(recursive=True)]:
                            member.send_signal(signal.SIGTERM)
                break
            if all(code is not None for code in codes.values()):
                break
            time.sleep(0.005)
        self.done.set()


def test_on_slurm_the_workers_exit_0_first_and_srun_reads_the_heads_75(
    runners: RunnerCluster, tmp_path: Path
) -> None:
    """A hang on node 2 of three: every runner decides 75; the workers exit 0 once they
    learned it, the head 75 after them, so srun cancels nobody and reports 75."""
    home = tmp_path / "home"
    home.mkdir()
    slurm = _home(home, "linuxproc")
    runners.start(3, {2: (["--heartbeat-timeout", "2"], SLEEP)}, extra_env=slurm)
    srun = _Srun(runners.processes)
    srun.start()
    codes = runners.wait()
    assert srun.done.wait(30)
    outputs = {rank: runners.output(rank)[-3000:] for rank in codes}
    assert codes == {0: EXIT_RETRY, 1: 0, 2: 0}, outputs
    assert srun.cancelled == [], f"srun would have cancelled {srun.cancelled}: {outputs}"
    # Each node's record keeps the job's decision; only the process exit differs.
    assert runners.record(2)["reason"] == "heartbeat_timeout"
    assert {runners.record(rank)["exit_code"] for rank in (0, 1, 2)} == {EXIT_RETRY}
    assert "the head exits 75 for the job" in runners.output(1)
    waited = "waiting for the workers' Slurm tasks to end (no done files: a margin), then 75"
    assert waited in runners.output(0)
    board = json.loads((runners.state_root / "node-0" / "coordination.json").read_text())
    assert board["decision"]["node"] == 2


def test_under_skypilots_executor_the_head_releases_the_worker_and_srun_reads_75(
    tmp_path: Path, leak_tag: str
) -> None:
    """proctrack/cgroup, whole: two SkyPilot executors (ranks 0 and 1 of one step) run
    real runners as their ``run:``; rank 1 hangs. The head finds the step and the home
    through its executor (SkyPilot unset them for ``run:``), the worker's executor waits
    in SkyPilot's barrier until the head's done file, and srun cancels nobody."""
    home = tmp_path / "home"
    home.mkdir()
    (home / PROCTRACK_FILE).write_text("cgroup\n")
    port = reserve_port()
    ip = socket.gethostbyname(socket.gethostname())
    tasks: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for rank in (0, 1):
            hang = "--heartbeat-timeout 2" if rank == 1 else ""
            script = (
                # What a second host would give: SKYPILOT_NODE_IPS from two names.
                f"export SKYPILOT_NODE_IPS=$'{ip}\\n{ip}' SKYPILOT_TASK_ID=sky-slurm-exit_0 "
                f"SKYGUARD_COORD_SECRET=slurm-exit-secret PYTHONPATH={REPO}\n"
                f"cd {REPO} && {PYTHON} -m devops.skypilot run --coord-port {port} "
                f"--coord-timeout 2 --grace 5 --state-dir {tmp_path}/state/node-{rank} {hang} "
                f"-- {' '.join(SLEEP)}\n"
            )
            tasks[rank] = _skypilot_task(
                home, script, rank, leak_tag, output=tmp_path / f"task-{rank}.log"
            )
        srun = _Srun(tasks)
        srun.start()
        codes = {rank: task.wait(timeout=120) for rank, task in tasks.items()}
        assert srun.done.wait(30)
    finally:
        for task in tasks.values():
            kill_tree(task)
        _reap_skypilots_daemons(leak_tag)
    logs = {rank: (tmp_path / f"task-{rank}.log").read_text(errors="replace") for rank in tasks}
    assert codes == {0: EXIT_RETRY, 1: 0}, logs
    assert srun.cancelled == [], f"srun would have cancelled {srun.cancelled}: {logs}"
    assert "to end (their done files), then 75" in logs[0], logs[0][-3000:]
    done = home / ".sky_run_done_4242_7"
    assert sorted(path.name for path in done.iterdir()) == ["0", "1"]
    record = json.loads((tmp_path / "state" / "node-1" / "termination.json").read_text())
    assert record["reason"] == "heartbeat_timeout"

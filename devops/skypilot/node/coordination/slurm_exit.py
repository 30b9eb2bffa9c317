"""On Slurm, which node exits with the job's code, and when.

SkyPilot runs every node's task under one ``srun --kill-on-bad-exit``
(``sky/backends/task_codegen.py``): the first task to exit non-zero has Slurm
SIGTERM every other task, SkyPilot's executor and the ``run:`` shell included, and
srun reports the highest code of all, 143 for a task ended that way. The runner
ignores that SIGTERM once it has decided, but nothing above it does. When every
node exits with the job's code, the first one out turns the others' 75 into 143,
and a recovery becomes FAILED (1 run in 5 here, docs/distributed.md).

So on a multi-node Slurm step only the head exits non-zero, and only once every
worker's task has ended: a worker that knows the job's decision exits 0 (a clean
exit cancels nothing), and the head, which leaves the protocol last, waits for the
workers before it exits with the decision's code, which srun then reports alone.
How the head knows the workers are gone depends on how Slurm tracks processes:

``proctrack/cgroup``
    SkyPilot's executor holds a task whose script exited 0 until every rank wrote
    its done file (``<home>/.sky_run_done_<job>_<step>/<rank>``, made by rank 0 only
    when it succeeded, ``sky/skylet/executor/slurm.py``). The head makes the
    directory, waits for every worker's file, writes its own, which releases them,
    and gives them :data:`RELEASE_MARGIN` to exit (they look every 0.5 s). SkyPilot
    unsets the step's variables for ``run:``, so the step and the shared home are read
    where SkyPilot's executor reads them: its environment and its ``--cluster-home-dir``
    (it is an ancestor of the runner); else from the task's cgroup and ``$HOME``.
any other tracking
    A worker's task ends with its ``run:`` script, just after its runner (and
    SkyPilot's appended upload flush): the head waits :data:`WORKER_EXIT_MARGIN`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from devops.skypilot.common.termination import EXIT_SUCCESS

logger = logging.getLogger(__name__)

#: SkyPilot's provisioner writes Slurm's ProctrackType here, in the cluster's shared home
#: (``sky.skylet.constants.SLURM_PROCTRACK_TYPE_FILE``).
PROCTRACK_FILE = ".sky_proctrack_type"
#: Seconds the head gives released workers to leave SkyPilot's barrier (it polls each 0.5 s).
RELEASE_MARGIN = 2.0
#: Seconds the head waits, without done files, for the workers' tasks to end after the
#: exit barrier opened: their runners' exit, the ``run:`` script's end and its flush.
WORKER_EXIT_MARGIN = 5.0
#: A task's cgroup under proctrack/cgroup: ``.../job_<id>/step_<id>/...`` (v1 and v2).
_STEP_CGROUP = re.compile(r"/job_(\d+)/step_(\d+)(?:/|$)", re.MULTILINE)
_POLL = 0.1
#: SkyPilot's Slurm executor: the task's main process, which srun starts and which runs
#: ``run:`` (``python -m sky.skylet.executor.slurm ... --cluster-home-dir=DIR``).
_EXECUTOR = "sky.skylet.executor.slurm"
_HOME_FLAG = "--cluster-home-dir"


@dataclass(frozen=True)
class SlurmStep:
    """This node's task in a multi-node Slurm step, as far as the exit order needs it."""

    rank: int
    num_nodes: int
    #: SkyPilot's run-done barrier of this step; None where tasks are not held
    #: (proctrack other than cgroup, or the step unknown: then the margin is all).
    done_dir: Path | None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        rank: int,
        num_nodes: int,
        cgroup_text: str | None = None,
    ) -> SlurmStep | None:
        """None unless this is one node of several under Slurm (``SLURM_JOB_ID`` is
        job-scoped: SkyPilot keeps it for the ``run:`` script, unlike the step's ids)."""
        if num_nodes < 2 or not env.get("SLURM_JOB_ID", "").strip():
            return None
        executor = _ExecutorView.above()
        home = Path(env.get("HOME") or os.path.expanduser("~"))
        if executor is not None and executor.home is not None:
            home = executor.home
        try:
            proctrack = (home / PROCTRACK_FILE).read_text().strip()
        except OSError:
            proctrack = "cgroup"  # SkyPilot's executor assumes cgroup without the file
        if proctrack != "cgroup":
            return cls(rank, num_nodes, None)
        if executor is not None and executor.job_step is not None:
            return cls(rank, num_nodes, home / f".sky_run_done_{executor.job_step}")
        if cgroup_text is None:
            try:
                cgroup_text = Path("/proc/self/cgroup").read_text()
            except OSError:
                cgroup_text = ""
        found = _STEP_CGROUP.search(cgroup_text)
        if found is None:
            logger.warning(
                "coordination: Slurm tracks tasks by cgroup, but this task's cgroup names no "
                "step; the head waits %gs for the workers instead of SkyPilot's done files",
                WORKER_EXIT_MARGIN,
            )
            return cls(rank, num_nodes, None)
        job, step = found.groups()
        return cls(rank, num_nodes, home / f".sky_run_done_{job}_{step}")


@dataclass(frozen=True)
class _ExecutorView:
    """What SkyPilot's executor, an ancestor of the runner, knows of the step."""

    #: Its ``--cluster-home-dir``: the shared home (in a container, not ``~``).
    home: Path | None
    #: ``<job>_<step>`` from srun's variables in its environment.
    job_step: str | None

    @classmethod
    def above(cls) -> _ExecutorView | None:
        """None without one (a runner started some other way, or in a test)."""
        try:
            for process in psutil.Process().parents():
                argv = process.cmdline()
                if _EXECUTOR not in argv:
                    continue
                env = process.environ()
                job, step = env.get("SLURM_JOB_ID"), env.get("SLURM_STEP_ID")
                return cls(_flag(argv, _HOME_FLAG), f"{job}_{step}" if job and step else None)
        except psutil.Error:
            pass
        return None


def _flag(argv: list[str], name: str) -> Path | None:
    """The value of ``name=VALUE`` or ``name VALUE`` in ``argv``, as argparse reads it."""
    for index, arg in enumerate(argv):
        if arg.startswith(f"{name}="):
            return Path(arg.split("=", 1)[1])
        if arg == name and index + 1 < len(argv):
            return Path(argv[index + 1])
    return None


def exit_code_on_slurm(code: int, *, is_head: bool, decided: bool) -> int:
    """What a node of a multi-node Slurm step exits with, given the job's code for it.

    A worker that learned the head's decision exits 0: the head carries the code.
    Without a decision (the head unreachable) a worker's own code stands.
    """
    if is_head or not decided:
        return code
    return EXIT_SUCCESS


def wait_for_workers(
    step: SlurmStep,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """The head, before it exits non-zero: until every worker's task has ended, at most
    ``timeout`` seconds for their done files. False when some never came."""
    if step.done_dir is None:
        sleep(WORKER_EXIT_MARGIN)
        return True
    # As SkyPilot's rank 0 does: a leftover file must never satisfy the barrier.
    shutil.rmtree(step.done_dir, ignore_errors=True)
    step.done_dir.mkdir(parents=True, exist_ok=True)
    pending = set(range(step.num_nodes)) - {step.rank}
    deadline = clock() + timeout
    while pending and clock() < deadline:
        pending = {rank for rank in pending if not (step.done_dir / str(rank)).exists()}
        if pending:
            sleep(_POLL)
    if pending:
        logger.warning(
            "coordination: node(s) %s wrote no done file within %gs; exiting anyway, "
            "and Slurm may report a signal for them",
            sorted(pending),
            timeout,
        )
    (step.done_dir / str(step.rank)).touch()
    sleep(RELEASE_MARGIN)
    return not pending

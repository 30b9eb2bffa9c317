"""SkyPilot's Ray path (clouds, Kubernetes) with two real nodes: SkyPilot 0.14.1's own
``RayCodeGen`` program, built by ``CloudVmRayBackend._execute_task_n_nodes`` from
``recipes/job.yaml``, runs ``skyguard run`` on each node of a real two-node Ray cluster on
this machine (tests/e2e/ray_path.py), and SkyPilot's jobs controller decides on the exit
codes the program stored (``should_restart_on_failure`` with the recipe's ``job_recovery``).

The program runs one Ray task per node; the first non-zero return code marks the job
failed and every task not yet returned is cancelled with ``ray.cancel(force=True)``,
listed as 137. Whatever order the nodes end in, the list must restart the job for a
hang (75) and not for a crash.

Ray runs in its own venv (tests/e2e/ray_runtime.sh), never in the project's. No Slurm,
no ``sky`` API server: this module needs no e2e lock. One Ray cluster for the module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from devops.skypilot.common.termination import EXIT_RETRY
from tests.conftest import TAG_VAR, tagged_processes
from tests.ports import reserve_port

from .conftest import REPO

pytestmark = pytest.mark.e2e

RUNTIME_SCRIPT = REPO / "tests" / "e2e" / "ray_runtime.sh"
RAY_PATH = REPO / "tests" / "e2e" / "ray_path.py"
RECIPE = REPO / "recipes" / "job.yaml"
#: What SkyPilot's program lists for a node it cancelled (CANCELLED_RETURN_CODE).
CANCELLED = 137
CRASH = 3
#: Guards against a hang only.
RUNTIME_TIMEOUT = 1200
CLUSTER_TIMEOUT = 180.0
JOB_TIMEOUT = 300
#: SkyPilot's subprocess daemon SIGKILLs what is left of a task 30 s after the task's
#: Ray worker went; a runner still alive after that was left behind.
LEFTOVER_BOUND = 40.0
#: examples/train.py on every node; the fault (its command in $FAULT) only on rank 1.
COMMAND = (
    'if [ "$SKYPILOT_NODE_RANK" = 1 ] && [ -n "$FAULT" ]; then eval "$FAULT"; fi; '
    f"exec {sys.executable} {REPO / 'examples' / 'train.py'} --steps 100000 --step-time 0.2 "
    "$TRAIN_ARGS"
)


@dataclass(frozen=True)
class RayCluster:
    python: Path
    address: str
    #: Ray's RAY_TMPDIR: short, for the unix sockets under it.
    root: Path
    #: The nodes' home (~/sky_workdir, ~/sky_logs, SkyPilot's job table), as on a node
    #: where Ray, the skylet and the job program share one.
    home: Path
    #: Carried by every process of the cluster (raylets, workers, SkyPilot's daemons).
    tag: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SKYPILOT_", "SKYGUARD_", "RAY_", "VIRTUAL_ENV"))
        }
        # The nodes' `skyguard` (and `python`) is the project's, first on PATH.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env.update({"RAY_TMPDIR": str(self.root), "HOME": str(self.home), TAG_VAR: self.tag})
        env.update(extra)
        return env


def _describe(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline())[:160]
    return "(gone)"


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    made = subprocess.run(
        ["bash", str(RUNTIME_SCRIPT)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUNTIME_TIMEOUT,
        check=False,
    )
    sys.stderr.write(made.stdout)
    if made.returncode != 0:
        pytest.fail(f"tests/e2e/ray_runtime.sh failed:\n{made.stderr[-2000:]}")
    python = Path(made.stdout.strip().splitlines()[-1].split("=", 1)[1])
    root = Path(tempfile.mkdtemp(prefix="sgray", dir="/tmp"))
    home = root / "home"
    (home / "sky_workdir").mkdir(parents=True)
    cluster = RayCluster(python=python, address="", root=root, home=home, tag=uuid.uuid4().hex)
    log = root / "cluster.log"
    with log.open("wb") as out:
        holder = subprocess.Popen(
            [str(python), str(RAY_PATH), "cluster"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cluster.env(),
            cwd=root,
        )
    try:
        deadline = time.monotonic() + CLUSTER_TIMEOUT
        address = ""
        while not address:
            lines = log.read_text(errors="replace").splitlines()
            address = next((x.split("=", 1)[1] for x in lines if x.startswith("RAY_ADDRESS=")), "")
            assert holder.poll() is None, f"Ray did not start:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no Ray cluster:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield dataclasses.replace(cluster, address=address)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # the holder shuts the cluster down
        try:
            holder.wait(timeout=60)
        finally:
            # SkyPilot's subprocess daemons double-fork away from Ray's tree; each
            # exits 30 s after its task ended. Everything tagged goes now.
            _kill(tagged_processes(cluster.tag))
            if holder.poll() is None:
                holder.kill()
                holder.wait()
            shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Outcome:
    #: What ray_path.py printed: the program's stored exit codes, SkyPilot's decision.
    result: Mapping[str, Any]
    #: Each node's termination.json.
    records: Mapping[int, Mapping[str, Any]]
    #: The runner's and its command's processes alive when the program ended.
    alive_at_end: list[str]
    #: How long after the program ended the last of them was gone.
    left_after: float
    #: SkyPilot's subprocess daemons (one per task) alive when the program ended.
    daemons_at_end: int


def _run(cluster: RayCluster, tmp_path: Path, envs: Mapping[str, str]) -> Outcome:
    state = tmp_path / "state"
    state.mkdir()
    # The task's envs reach each node's `run:` (SkyPilot exports them): the runner and
    # its command carry this tag, the cluster's own processes the cluster's.
    tag = uuid.uuid4().hex
    task_envs = {
        TAG_VAR: tag,
        "SKYGUARD_CMD": COMMAND,
        "SKYGUARD_STATE_BUCKET": "unused-no-mount",
        "SKYGUARD_STATE_ROOT": str(state),
        "SKYGUARD_GRACE": "5s",
        "SKYGUARD_COORD_PORT": str(reserve_port()),
        "SKYGUARD_COORD_SECRET": uuid.uuid4().hex,
        "TRAIN_ARGS": "",
        "FAULT": "",
        **envs,
    }
    argv = [str(cluster.python), str(RAY_PATH), "job", str(RECIPE)]
    argv += [f"{k}={v}" for k, v in task_envs.items()]
    try:
        done = subprocess.run(
            argv,
            env=cluster.env(RAY_ADDRESS=cluster.address),
            cwd=cluster.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=JOB_TIMEOUT,
            check=False,
        )
        ended = time.monotonic()
        alive_at_end = [_describe(process) for process in tagged_processes(tag)]
        daemons_at_end = sum(
            "subprocess_daemon" in _describe(process) for process in tagged_processes(cluster.tag)
        )
        assert done.returncode == 0, f"ray_path.py job: {done.stdout[-2000:]}{done.stderr[-3000:]}"
        result = json.loads(done.stdout.strip().splitlines()[-1])
        # A runner or command of a node Ray cancelled must not outlive it for long.
        while tagged_processes(tag) and time.monotonic() - ended < LEFTOVER_BOUND:
            time.sleep(0.2)
        left_after = time.monotonic() - ended
        leftover = tagged_processes(tag)
        assert not leftover, [p.cmdline() for p in leftover]
    finally:
        _kill(tagged_processes(tag))
    (run,) = [path for path in state.iterdir() if path.is_dir()]
    records = {
        rank: json.loads((run / f"node-{rank}" / "termination.json").read_text()) for rank in (0, 1)
    }
    log = Path(result["run_log"]).read_text(errors="replace")
    sys.stderr.write(log[-4000:])
    return Outcome(result, records, alive_at_end, left_after, daemons_at_end)


def _report(name: str, outcome: Outcome) -> None:
    result = outcome.result
    print(
        f"ray path, {name}: return codes {result['exit_codes']}, restart {result['restart']}; "
        f"runner processes alive at the program's end: {outcome.alive_at_end}, all gone "
        f"{outcome.left_after:.1f}s later; SkyPilot daemons alive: {outcome.daemons_at_end}"
    )


def _ends(outcome: Outcome) -> list[tuple[int, str, int]]:
    return [
        (rank, item["reason"], item["exit_code"])
        for rank, record in sorted(outcome.records.items())
        for item in record["history"]
    ]


def _check_recipe_recovery(result: Mapping[str, Any]) -> None:
    """The controller's executor was made from the recipe's job_recovery."""
    assert result["strategy"] == "EagerFailoverStrategyExecutor", result
    assert result["recover_on_exit_codes"] == [EXIT_RETRY], result
    assert result["max_restarts_on_errors"] == 0, result


def test_a_hang_on_one_ray_node_gives_a_list_skypilot_restarts(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    outcome = _run(
        ray_cluster,
        tmp_path,
        {"SKYGUARD_HEARTBEAT_TIMEOUT": "5s", "FAULT": "TRAIN_ARGS=--hang-after\\ 5"},
    )
    result = outcome.result
    _report("hang", outcome)
    _check_recipe_recovery(result)
    assert _ends(outcome) == [(0, "peer_failed", EXIT_RETRY), (1, "heartbeat_timeout", EXIT_RETRY)]
    codes = result["exit_codes"]
    assert len(codes) == 2 and EXIT_RETRY in codes, result
    assert set(codes) <= {EXIT_RETRY, CANCELLED}, result
    assert result["status"] == "FAILED", result
    assert result["restart"] is True, result


def test_a_crash_on_one_ray_node_gives_a_list_skypilot_does_not_restart(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    outcome = _run(ray_cluster, tmp_path, {"FAULT": f"sleep 2; exit {CRASH}"})
    result = outcome.result
    _report("crash", outcome)
    _check_recipe_recovery(result)
    assert _ends(outcome) == [(0, "peer_failed", CRASH), (1, "job_failed", CRASH)]
    codes = result["exit_codes"]
    assert len(codes) == 2 and CRASH in codes, result
    assert set(codes) <= {CRASH, CANCELLED}, result
    assert result["status"] == "FAILED", result
    assert result["restart"] is False, result

"""A jobs-controller restart in the middle of a managed job keeps the runner's attempt count.

The job is launched with SkyPilot's own ``sky jobs launch`` and no ``SKYGUARD_RUN_KEY``,
so the runner falls back to the managed job's name and id (the task id without the
controller's timestamp). The controller runs inside the local API server
(consolidation mode): ``sky api stop`` stops it mid-attempt, ``sky api start`` starts
it again, and from then on SkyPilot hands the job a ``SKYPILOT_TASK_ID`` with a new
timestamp. The demo hangs on every attempt: all attempts must land in one state
dir, numbered on, until the crash-loop guard ends the endless hang/recover loop
with 125 (this is the tier's crash-loop test too: one slow job, not two).

It runs alone, before the concurrent jobs of ``test_slurm_e2e.py`` are submitted
(files run in name order): restarting the controller under them would restart them too.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from devops.skypilot.common.termination import EXIT_CRASH_LOOP, EXIT_RETRY

from .conftest import JOB_TIMEOUT, POLL_SECONDS, TERMINAL, Cluster

pytestmark = pytest.mark.e2e


def _wait_for(predicate, what: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_SECONDS)


def test_controller_restart_keeps_the_attempt_count_and_the_guard_ends_a_hang_loop(
    cluster: Cluster,
) -> None:
    name = f"e2e-restart-{cluster.session}"
    rendered = cluster.launch(
        "--dump-config",
        "json",
        *cluster.job_args(name),
        "--heartbeat-timeout",
        "10s",
        "--grace",
        "5s",
        "--env",
        "SKYGUARD_CRASH_LOOP_COUNT=2",
        "--",
        "bash",
        "-c",
        'echo "skypilot task id: $SKYPILOT_TASK_ID"; '
        "exec python examples/train.py --steps 100000 --step-time 0.2 --hang-after 100",
    )
    config = json.loads(rendered)
    # What a user of plain `sky jobs launch recipes/job.yaml` has: no stamped key.
    del config["envs"]["SKYGUARD_RUN_KEY"]
    task_file = cluster.state_root / f"{name}.yaml"
    task_file.write_text(json.dumps(config))
    started = time.monotonic()
    cluster.run([str(cluster.sky), "jobs", "launch", "-y", "-d", str(task_file)], timeout=600)
    job_id = cluster.job_id(name)
    run_dir = cluster.state_root / f"{name}_{job_id}-0" / "node-0"

    def ended() -> bool:
        return str(cluster.queue([job_id])[job_id]["status"]) in TERMINAL

    try:
        _wait_for(lambda: (run_dir / "logs" / "attempt-1.log").is_file(), "attempt 1 to start", 900)
        to_running = time.monotonic() - started
        print(f"e2e timing: restart job submit to attempt 1 running = {to_running:.1f}s")
        stopped = time.monotonic()
        cluster.run([str(cluster.sky), "api", "stop"], timeout=300)
        # The API server, and the jobs controller inside it, start again.
        cluster.run([str(cluster.sky), "api", "start"], timeout=300)
        print(f"e2e timing: sky api stop + restart = {time.monotonic() - stopped:.1f}s")
        _wait_for(ended, f"job {job_id} to end", JOB_TIMEOUT)
        print(f"e2e timing: restart job submit to FAILED = {time.monotonic() - started:.1f}s")
    finally:
        if not ended():
            cluster.run([str(cluster.sky), "jobs", "cancel", "-y", str(job_id)], check=False)
    state = cluster.queue([job_id])[job_id]
    assert state["status"] == "FAILED"
    assert state["recoveries"] == 1
    data = json.loads((run_dir / "termination.json").read_text())
    history = data["history"]
    attempts = [item["attempt"] for item in history]
    assert attempts == list(range(1, len(history) + 1)), attempts
    assert [(r["reason"], r["exit_code"]) for r in history] == [
        ("heartbeat_timeout", EXIT_RETRY),
        ("crash_loop", EXIT_CRASH_LOOP),
    ]
    assert data["reason"] == "crash_loop" and data["exit_code"] == EXIT_CRASH_LOOP
    assert {item["task_id"] for item in history} == {f"{name}_{job_id}-0"}
    # The restart really gave the job a new SKYPILOT_TASK_ID on a later attempt.
    seen = []
    for number in attempts:
        log = (run_dir / "logs" / f"attempt-{number}.log").read_text()
        seen += re.findall(r"skypilot task id: (\S+)", log)
    assert len(set(seen)) >= 2, seen
    assert all(
        item.startswith("sky-managed-") and item.endswith(f"_{name}_{job_id}-0") for item in seen
    )
    assert not list(Path(cluster.state_root).glob(f"sky-managed-*_{name}_*"))
    # What the user sees without the state dir: the controller relayed the guard's end.
    assert cluster.status(name)["last"]["exit_code"] == EXIT_CRASH_LOOP

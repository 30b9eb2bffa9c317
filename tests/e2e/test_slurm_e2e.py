"""skyguard on real SkyPilot: plain launch, recovery on exit 75, final failures, and a
launch from a user's own repository (no skyguard source in it).

The crash-loop guard is proven in ``test_controller_restart.py``, whose job hangs on
every attempt.

The managed jobs are submitted together by one fixture and run concurrently on
the local Slurm cluster; each test then waits for its own. Timings are printed
(run pytest with ``-s``) and written to ``$SKYGUARD_E2E_TIMINGS`` when set.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devops.skypilot.common.termination import EXIT_RETRY

from .conftest import REPO, Cluster, Jobs, run_records, termination_history

pytestmark = pytest.mark.e2e

DEMO = ("python", "examples/train.py", "--steps", "10", "--step-time", "0.2")
#: A user's whole training repo: it beats through the skyguard the node installed (the
#: client's wheel) and says which file that was, with its hash.
USER_TRAIN = """\
import hashlib, json, os, sys, time
from devops.skypilot import heartbeat
written = 0
for step in range(5):
    written += heartbeat.beat()
    time.sleep(0.2)
probe = {"heartbeat": heartbeat.__file__, "beats": written}
probe["beat_file"] = os.path.exists(os.environ["SKYGUARD_HEARTBEAT_FILE"])
probe["sha256"] = hashlib.sha256(open(heartbeat.__file__, "rb").read()).hexdigest()
with open(os.environ["E2E_PROBE"], "w") as handle:
    json.dump(probe, handle)
print("user-train: done")
"""
TIMINGS: dict[str, float] = {}


def _record(key: str, seconds: float) -> None:
    TIMINGS[key] = round(seconds, 1)
    print(f"e2e timing: {key} = {seconds:.1f}s")


def _iso_seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


def _user_repo(root: Path) -> Path:
    """A fresh git repository holding only train.py, as a new user's is."""
    repo = root / "my-training"
    repo.mkdir()
    (repo / "train.py").write_text(USER_TRAIN)
    env = {**os.environ, "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@example.com"}
    env.update(GIT_COMMITTER_NAME="e2e", GIT_COMMITTER_EMAIL="e2e@example.com")
    for argv in (["init", "-q", "-b", "main"], ["add", "train.py"], ["commit", "-qm", "train"]):
        subprocess.run(["git", *argv], cwd=repo, env=env, check=True, timeout=60)
    return repo


@pytest.fixture(scope="module")
def jobs(cluster: Cluster, two_node_jobs: Jobs) -> Iterator[Jobs]:
    # two_node_jobs: submitted before these, so that the slowest jobs of the tier (two
    # nodes, provisioned twice for a recovery) run alongside these instead of after.
    jobs = Jobs(cluster)
    try:
        # From a user's own repository: the shipped recipe, the client's skyguard as a
        # wheel; submitted with the others so it costs the tier no extra wait.
        repo = _user_repo(cluster.state_root)
        jobs.submit(
            "user",
            "--heartbeat-timeout",
            "60s",
            "--env",
            f"E2E_PROBE={cluster.state_root / 'user-probe.json'}",
            "--",
            "python",
            "train.py",
            repo=repo,
        )
        # Hangs on its first attempt only (the runner's attempt count lives on
        # the shared state root, so attempt 2 knows it is attempt 2).
        jobs.submit(
            "recover",
            "--heartbeat-timeout",
            "10s",
            "--grace",
            "5s",
            "--",
            *DEMO,
            "--hang-after",
            "3",
            "--only-attempts",
            "1",
        )
        # Fails on its own: exit 1 is final, SkyPilot must not restart it.
        jobs.submit("final", "--", *DEMO, "--crash-after", "2")
        yield jobs
    finally:
        jobs.cancel_unfinished()
        path = os.environ.get("SKYGUARD_E2E_TIMINGS")
        if path and TIMINGS:
            Path(path).write_text(json.dumps(TIMINGS, indent=2) + "\n")


def test_sky_launch_of_the_recipe_runs_the_runner_and_succeeds(
    cluster: Cluster, jobs: Jobs
) -> None:
    """`sky launch` (SkyPilot's own CLI) of recipes/job.yaml, as `skyguard launch --dry-run`
    renders it for a shared state path, runs the demo under the runner to SUCCEEDED."""
    name = f"e2e-plain-{cluster.session}"
    rendered = cluster.launch(
        "--dry-run",
        "--cluster",
        name,
        *cluster.job_args(name),
        "--heartbeat-timeout",
        "30s",
        "--",
        *DEMO,
    )
    task_file = cluster.state_root / f"{name}.yaml"
    task_file.write_text(rendered)
    started = time.monotonic()
    try:
        out = cluster.run(
            [str(cluster.sky), "launch", "-y", "-c", name, str(task_file)], timeout=900
        )
        _record("sky launch (provision + setup + run) to SUCCEEDED", time.monotonic() - started)
        assert "status: SUCCEEDED" in out, out[-2000:]
        assert "train: done" in out
        report = cluster.status(name, "--cluster")
        assert report["status"] == "SUCCEEDED"
        assert report["last"]["reason"] == "completed"
        assert report["last"]["exit_code"] == 0
        assert report["source"] == "job log"
        records = run_records(cluster.state_root, name)
        assert len(records) == 1, records
        assert json.loads(records[0].read_text())["reason"] == "completed"

        # `skyguard launch --cluster` (the SDK path) onto the same, already-up
        # cluster: setup re-runs and skips the install, the job runs to the end.
        started = time.monotonic()
        out = cluster.launch(
            "--cluster",
            name,
            *cluster.job_args(f"{name}-again"),
            "--follow",
            "--",
            *DEMO,
            "--steps",
            "3",
        )
        _record(
            "skyguard launch --cluster on an up cluster, with --follow", time.monotonic() - started
        )
        job_id = out.split()[0]
        assert job_id.isdigit() and int(job_id) > 1, out[:500]
        assert "train: done" in out
        again = cluster.status(name, "--cluster")
        assert again["job_id"] == int(job_id)
        assert again["status"] == "SUCCEEDED"
        assert again["last"]["reason"] == "completed"
    finally:
        cluster.run([str(cluster.sky), "down", "-y", name], timeout=300, check=False)


def test_hang_is_detected_exits_75_and_skypilot_recovers_it(cluster: Cluster, jobs: Jobs) -> None:
    """Attempt 1 hangs: the runner exits 75, SkyPilot restarts the job (same
    SKYPILOT_TASK_ID), attempt 2 succeeds."""
    job = jobs.wait("recover")
    assert job.status == "SUCCEEDED"
    assert job.recoveries == 1
    history = termination_history(cluster.state_root, job.name)
    assert [(r["attempt"], r["reason"], r["exit_code"]) for r in history] == [
        (1, "heartbeat_timeout", EXIT_RETRY),
        (2, "completed", 0),
    ]
    # The run key `skyguard launch` stamped: the same on both attempts.
    assert history[0]["task_id"] == history[1]["task_id"]
    assert history[0]["task_id"].startswith(f"{job.name}-")

    report = cluster.status(job.name, "--state-dir", str(cluster.state_root))
    assert report["job_id"] == job.job_id
    assert report["recoveries"] == 1
    assert [r["reason"] for r in report["history"]] == ["heartbeat_timeout", "completed"]
    # Without the state dir: every attempt's line, relayed by the jobs controller.
    from_log = cluster.status(job.name)
    assert from_log["source"] == "controller log"
    assert [r["reason"] for r in from_log["history"]] == ["heartbeat_timeout", "completed"]

    first_start = _iso_seconds(history[0]["started_at"])
    _record("managed job: `skyguard launch` returns the job id", job.submit_seconds)
    _record("managed job: submit to attempt 1 running", first_start - job.submitted_wall)
    _record(
        "managed job: hang detected (exit 75) to attempt 2 running",
        _iso_seconds(history[1]["started_at"]) - _iso_seconds(history[0]["ended_at"]),
    )
    _record(
        "managed job: submit to attempt 2 done",
        _iso_seconds(history[1]["ended_at"]) - job.submitted_wall,
    )


def test_final_failure_is_not_retried(cluster: Cluster, jobs: Jobs) -> None:
    job = jobs.wait("final")
    assert job.status == "FAILED"
    assert job.recoveries == 0
    history = termination_history(cluster.state_root, job.name)
    assert [(r["reason"], r["exit_code"]) for r in history] == [("job_failed", 1)]


def test_a_users_own_repo_launches_with_the_clients_skyguard(cluster: Cluster, jobs: Jobs) -> None:
    """`skyguard launch -- python train.py` in a fresh repo with nothing but train.py: the
    recipe ships with skyguard, the node installs the client's own skyguard (a wheel by
    file_mounts) and the training code's heartbeat import is that skyguard."""
    job = jobs.wait("user")
    assert job.status == "SUCCEEDED"
    history = termination_history(cluster.state_root, job.name)
    assert [(r["reason"], r["exit_code"]) for r in history] == [("completed", 0)]
    probe = json.loads((cluster.state_root / "user-probe.json").read_text())
    assert probe["beats"] >= 1 and probe["beat_file"], probe
    assert "site-packages" in probe["heartbeat"], probe
    client_copy = REPO / "devops" / "skypilot" / "heartbeat.py"
    assert probe["sha256"] == hashlib.sha256(client_copy.read_bytes()).hexdigest()

"""Two nodes on real SkyPilot: ``skyguard launch --nodes 2`` onto the cluster's ``duo``
partition, two slurmd in their own network and UTS namespaces (tests/e2e/slurm_cluster.sh),
so each node's runner has its own address and the head serves the coordination there.

- Rank 1 hangs on every attempt: both nodes stop with one decision (rank 1's heartbeat
  timeout, 75), SkyPilot recovers the job once (same run key, attempt 2), and the
  crash-loop guard ends attempt 2 with 125 on both nodes: FAILED.
- Rank 1's command crashes: both nodes end with its exit code, SkyPilot does not
  restart the job.

The jobs are submitted by conftest's ``two_node_jobs``, which test_slurm_e2e.py's fixture
requests first, so they run alongside the one-node jobs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devops.skypilot.common.termination import EXIT_CRASH_LOOP, EXIT_RETRY

from .conftest import Job, Jobs

pytestmark = pytest.mark.e2e

#: The runner's exit barrier waits at most --grace (5 s here) + 10 s for the other node.
BARRIER_BOUND = 15.0


def _node_records(state_root: Path, name: str) -> dict[int, Mapping[str, Any]]:
    """termination.json of each node of the run named ``name`` (one run key)."""
    pattern = re.compile(rf"{re.escape(name)}-[0-9a-f]{{8}}")
    runs = [path for path in state_root.iterdir() if pattern.fullmatch(path.name)]
    assert len(runs) == 1, f"expected one state dir for {name}, found {runs}"
    records = {}
    for rank in (0, 1):
        path = runs[0] / f"node-{rank}" / "termination.json"
        assert path.is_file(), f"node {rank} left no record: {sorted(runs[0].rglob('*'))}"
        records[rank] = json.loads(path.read_text())
    return records


def _decision(state_root: Path, name: str) -> Mapping[str, Any]:
    """The head's coordination.json: the job's decision and every node's end."""
    (path,) = state_root.glob(f"{name}-*/node-0/coordination.json")
    data: Mapping[str, Any] = json.loads(path.read_text())
    return data


def _reported_code(job: Job) -> int | None:
    """The exit code SkyPilot read from srun for the attempt it did not restart."""
    found = re.search(r"exited with exit code (\d+)", job.failure_reason or "")
    return None if found is None else int(found.group(1))


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _ends(records: Mapping[int, Mapping[str, Any]]) -> list[tuple[int, int, str, int]]:
    return [
        (rank, item["attempt"], item["reason"], item["exit_code"])
        for rank, record in sorted(records.items())
        for item in record["history"]
    ]


def _spread(records: Mapping[int, Mapping[str, Any]], attempt: int) -> float:
    """Seconds between the two nodes' ends of ``attempt`` (records have whole seconds)."""
    ended = [
        _seconds(item["ended_at"])
        for record in records.values()
        for item in record["history"]
        if item["attempt"] == attempt
    ]
    assert len(ended) == 2, ended
    return abs(ended[0] - ended[1])


def test_a_hang_on_one_node_stops_both_is_recovered_and_the_guard_ends_the_loop(
    two_node_jobs: Jobs,
) -> None:
    state_root = two_node_jobs.cluster.state_root
    job = two_node_jobs.wait("duo-hang")
    records = _node_records(state_root, job.name)
    ends = _ends(records)
    assert job.status == "FAILED", (job.status, ends)
    assert job.recoveries == 1, ends
    assert _reported_code(job) == EXIT_CRASH_LOOP, job
    # Rank 1 hung both times; rank 0 stopped on its word, with its code, both times.
    assert [end[1:] for end in ends if end[0] == 1] == [
        (1, "heartbeat_timeout", EXIT_RETRY),
        (2, "crash_loop", EXIT_CRASH_LOOP),
    ]
    head = [end[1:] for end in ends if end[0] == 0]
    assert [(attempt, code) for attempt, _, code in head] == [
        (1, EXIT_RETRY),
        (2, EXIT_CRASH_LOOP),
    ]
    assert head[0][1] == "peer_failed", head
    # The same run on both nodes and attempts: the run key skyguard launch stamped.
    keys = {item["task_id"] for record in records.values() for item in record["history"]}
    assert len(keys) == 1 and keys.pop().startswith(f"{job.name}-"), records
    decision = _decision(state_root, job.name)["decision"]
    assert (decision["node"], decision["exit_code"]) == (1, EXIT_CRASH_LOOP), decision
    for attempt in (1, 2):
        assert _spread(records, attempt) <= BARRIER_BOUND, records

    rank1 = records[1]["history"]
    submitted = job.submitted_wall
    print(
        f"e2e timing: two nodes, hang: submit to attempt 1 running = "
        f"{_seconds(rank1[0]['started_at']) - submitted:.0f}s"
    )
    print(
        f"e2e timing: two nodes, hang: both nodes ended within "
        f"{max(_spread(records, 1), _spread(records, 2)):.0f}s of each other"
    )
    print(
        f"e2e timing: two nodes, hang: exit 75 to attempt 2 running = "
        f"{_seconds(rank1[1]['started_at']) - _seconds(rank1[0]['ended_at']):.0f}s"
    )
    print(
        f"e2e timing: two nodes, hang: submit to attempt 2 ended (125) = "
        f"{_seconds(rank1[1]['ended_at']) - submitted:.0f}s"
    )


def test_a_crash_on_one_node_is_final_on_both_and_not_restarted(two_node_jobs: Jobs) -> None:
    state_root = two_node_jobs.cluster.state_root
    job = two_node_jobs.wait("duo-crash")
    records = _node_records(state_root, job.name)
    ends = _ends(records)
    assert job.status == "FAILED", (job.status, ends)
    assert job.recoveries == 0, ends
    assert ends == [(0, 1, "peer_failed", 1), (1, 1, "job_failed", 1)]
    # What srun reported for the step: the head's 1 alone (rank 1 exited 0 after
    # learning the decision), never 143 for a task Slurm cancelled.
    assert _reported_code(job) == 1, job
    decision = _decision(state_root, job.name)["decision"]
    assert (decision["node"], decision["reason"]) == (1, "job_failed"), decision
    assert _spread(records, 1) <= BARRIER_BOUND, records
    ended = _seconds(records[1]["history"][0]["ended_at"])
    print(
        f"e2e timing: two nodes, crash: submit to both nodes ended = "
        f"{ended - job.submitted_wall:.0f}s"
    )

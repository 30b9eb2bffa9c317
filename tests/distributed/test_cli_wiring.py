"""`skyguard run --torchrun` and `--preflight` through the real CLI, with torch's CPU build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, SkyguardRunner
from tests.ports import reserve_port

pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.torch

WORKER = str(REPO / "tests" / "distributed" / "allreduce_worker.py")


def with_torchrun_on_path(skyguard: SkyguardRunner) -> dict[str, str]:
    bin_dir = str(Path(PYTHON).parent)  # the venv's torchrun sits beside its python
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_torchrun_runs_the_ranks_with_skypilot_rendezvous(skyguard: SkyguardRunner) -> None:
    result = skyguard.run(
        [WORKER],
        "--torchrun",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(reserve_port()),
        "--heartbeat-timeout",
        "60",
        env=with_torchrun_on_path(skyguard),
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank 0 of 2 sum 2" in result.stdout and "rank 1 of 2 sum 2" in result.stdout
    # The runner's NCCL defaults reached the ranks.
    assert "env TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in result.stdout
    record = result.record
    assert record["reason"] == "completed"


def test_torchrun_rank_crash_is_the_job_s_failure(skyguard: SkyguardRunner) -> None:
    result = skyguard.run(
        [WORKER, "--crash-rank", "1"],
        "--torchrun",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(reserve_port()),
        "--grace",
        "5",
        env=with_torchrun_on_path(skyguard),
        timeout=180,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.record["reason"] == "job_failed"


def test_preflight_gates_the_command(skyguard: SkyguardRunner, tmp_path: Path) -> None:
    two_ranks = {"SKYPILOT_NUM_GPUS_PER_NODE": "2"}  # two local ranks; gloo on this CPU
    ok = skyguard.run(
        [PYTHON, "-c", "print('training starts')"],
        "--preflight",
        "--master-port",
        str(reserve_port()),
        state_dir=tmp_path / "ok",
        env=two_ranks,
        timeout=180,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "training starts" in ok.stdout
    assert (tmp_path / "ok" / "nccl-preflight.json").exists()

    bad = skyguard.run(
        [PYTHON, "-c", "print('training starts')"],
        "--preflight",
        "--preflight-min-busbw",
        "1000000",
        "--master-port",
        str(reserve_port()),
        state_dir=tmp_path / "bad",
        env=two_ranks,
        timeout=180,
    )
    assert bad.returncode == 75, bad.stderr[-2000:]
    assert "training starts" not in bad.stdout  # the command never ran
    record = bad.record
    assert (record["reason"], record["monitor"]) == ("nccl_error", "Preflight")
    assert "busbw" in record["detail"] or "bandwidth" in record["detail"]

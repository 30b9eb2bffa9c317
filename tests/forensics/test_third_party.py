"""A training script not written here: PyTorch's own DDP tutorial, with no code change.

``tests/third_party/ddp_tutorial/multinode.py`` (pytorch/examples, unmodified) runs
under ``skyguard run --torchrun --nproc-per-node 2`` on CPU/gloo. It never heard of
skyguard: ``--progress-pattern`` watches the line each rank prints per epoch
(``[GPU1] Epoch 2 | Batchsize: 32 | Steps: 32``). ``shim/site-packages/sitecustomize.py``
runs it on CPU (the tutorial assumes an accelerator past its setup) and makes rank 1
hang at epoch 2, without touching the file.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from devops.skypilot.node.forensics.capture import find_py_spy
from tests.conftest import REPO, RunResult, SkyguardRunner
from tests.distributed.test_cli_wiring import with_torchrun_on_path
from tests.ports import reserve_port

pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.torch

TUTORIAL = REPO / "tests" / "third_party" / "ddp_tutorial" / "multinode.py"
SHIM = REPO / "tests" / "forensics" / "shim" / "site-packages"


def _line_of(text: str) -> int:
    lines = TUTORIAL.read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def _run(skyguard: SkyguardRunner, hang_epoch: int) -> RunResult:
    env = skyguard.env(with_torchrun_on_path(skyguard))
    env.update(
        PYTHONPATH=f"{SHIM}{os.pathsep}{REPO}",
        SHIM_TUTORIAL="1",
        SHIM_HANG_RANK="1",
        SHIM_HANG_EPOCH=str(hang_epoch),
    )
    state_dir = skyguard.tmp_path / "state"
    args = [
        *("--state-dir", str(state_dir), "--torchrun", "--nproc-per-node", "2"),
        *("--master-port", str(reserve_port()), "--heartbeat-timeout", "5"),
        *("--startup-grace", "120", "--progress-pattern", r"Epoch \d+ \|", "--grace", "5"),
        *("--", str(TUTORIAL), "4", "10", "--batch_size", "256"),
    ]
    # The tutorial writes snapshot.pt into its working directory: a scratch one.
    process = subprocess.Popen(
        skyguard.argv(args),
        env=env,
        cwd=skyguard.tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return RunResult(process.returncode, stdout, stderr, state_dir)


@pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed (the forensics extra)")
def test_the_hung_rank_of_the_tutorial_is_named_at_its_line(skyguard: SkyguardRunner) -> None:
    result = _run(skyguard, hang_epoch=2)
    assert result.returncode == 75, result.stderr[-3000:]
    record = result.record
    assert record["reason"] == "heartbeat_timeout"
    assert record["detail"].startswith("no heartbeat for 5."), record["detail"]
    summary = record["forensics"]["summary"]
    set_epoch = _line_of("self.train_data.sampler.set_epoch(epoch)")
    # Rank 1 sleeps in set_epoch; rank 0 waits for it in DDP's all_reduce.
    assert summary.startswith(
        f"rank 1 (pid {summary.split('pid ')[1].split(')')[0]}) in set_epoch at "
        f"multinode.py:{set_epoch} (Trainer._run_epoch); rank 0: in "
    ), summary
    assert f"stacks: {summary}" in record["detail"]
    # Epochs 0 and 1 ran to their end, watched by their lines only; the snapshot of epoch 0 too.
    log = (result.state_dir / "logs" / "attempt-1.log").read_text()
    assert "[GPU1] Epoch 1 | Batchsize: 256 | Steps: 4" in log
    assert "shim: rank 1 hangs at epoch 2" in log
    assert (skyguard.tmp_path / "snapshot.pt").exists()

"""The hang of issue 12 with real torch: gloo ranks under `skyguard run --torchrun`."""

from __future__ import annotations

from pathlib import Path

import pytest

from devops.skypilot.node.forensics.capture import find_py_spy
from tests.conftest import REPO, SkyguardRunner
from tests.distributed.test_cli_wiring import with_torchrun_on_path
from tests.ports import reserve_port

pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.torch

DDP_HANG = REPO / "tests" / "forensics" / "ddp_hang.py"


def _line_of(text: str) -> int:
    lines = DDP_HANG.read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


@pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed (the forensics extra)")
def test_the_rank_outside_the_collective_is_named(skyguard: SkyguardRunner) -> None:
    result = skyguard.run(
        [str(DDP_HANG)],
        "--torchrun",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(reserve_port()),
        "--heartbeat-timeout",
        "3",
        "--startup-grace",
        "120",
        "--grace",
        "5",
        env=with_torchrun_on_path(skyguard),
        timeout=180,
    )
    assert result.returncode == 75, result.stderr[-3000:]
    record = result.record
    assert record["reason"] == "heartbeat_timeout"
    # Both ranks beat last at step 3: neither still beats, the heartbeat blames none ...
    assert record["detail"].startswith("no heartbeat from rank")
    assert "still beating" not in record["detail"]
    # ... the stacks can: rank 0 waits in all_reduce for rank 1.
    summary = record["forensics"]["summary"]
    assert summary.startswith("rank 1 (pid "), summary
    sleep, reduce = _line_of("time.sleep(3600)"), _line_of("dist.all_reduce(grad)")
    assert f"in time.sleep at ddp_hang.py:{sleep} (_run_epoch); " in summary
    assert summary.endswith(f"rank 0: in all_reduce at ddp_hang.py:{reduce} (_run_epoch)")
    stacks = (Path(record["forensics"]["directory"]) / "stacks.txt").read_text()
    # The torchrun agent was looked at too, and left out of the summary.
    assert stacks.count(" (py-spy):\n") == 3 and record["forensics"]["processes"] == 3

"""Flight-recorder dumps, analysed by torch's own analyser, name the stuck collective."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from devops.skypilot.common.forensics import Forensics
from devops.skypilot.node.forensics import flight
from tests.conftest import PYTHON, REPO, SkyguardRunner
from tests.ports import reserve_port

pytest.importorskip("torch.distributed.flight_recorder")
pytestmark = pytest.mark.torch

FR_JOB = str(REPO / "tests" / "forensics" / "fr_job.py")


def _line_of(text: str) -> int:
    lines = Path(FR_JOB).read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def test_the_collective_rank_1_never_joined_is_named(skyguard: SkyguardRunner) -> None:
    result = skyguard.run(
        [PYTHON, FR_JOB, str(reserve_port())],
        "--heartbeat-timeout",
        "3",
        "--startup-grace",
        "120",
        # The bound is a guard here: torch's import takes seconds on a loaded machine.
        "--forensics-timeout",
        "120",
        timeout=300,
    )
    assert result.returncode == 75, result.stderr[-3000:]
    record = result.record
    assert record["reason"] == "heartbeat_timeout"
    line = record["forensics"]["flight_recorder"]
    reduce = _line_of("the fourth: rank 1 never joins")
    assert line == (
        f"flight recorder: all_reduce #4 (default_pg) at fr_job.py:{reduce} (rank_main) "
        "never joined by rank 1"
    ), line
    assert record["detail"].endswith(f"; {line}")
    # The raw dumps stay with the attempt, next to the stacks.
    copied = Path(record["forensics"]["directory"]) / flight.SUBDIR
    assert sorted(path.name for path in copied.glob("rank_*")) == ["rank_0", "rank_1"]
    # The stacks, captured before the stop, name where each rank waits.
    assert "in time.sleep at fr_job.py:" in record["forensics"]["summary"]

    # A rank that left no dump is named as such; dumps of an earlier attempt are not this one's.
    only_rank_0 = skyguard.tmp_path / "dumps"
    only_rank_0.mkdir()
    shutil.copy(copied / "rank_0", only_rank_0 / "rank_0")
    env = {"TORCH_NCCL_DEBUG_INFO_TEMP_FILE": str(only_rank_0 / "rank_")}
    out = skyguard.tmp_path / "analysis"
    assert flight.analyse(env, 0.0, out, 60.0) == (
        f"flight recorder: last collective all_reduce #4 (default_pg) at fr_job.py:{reduce} "
        "(rank_main), scheduled; no dump from rank 1"
    )
    assert flight.analyse(env, 4e9, out, 60.0) is None


def test_the_entry_keeps_the_line_through_the_record() -> None:
    entry = Forensics("", "/state/forensics/attempt-1", 0, 0, 0.0, flight_recorder="flight ...")
    assert Forensics.from_json(json.loads(json.dumps(entry.to_json()))) == entry
    without = Forensics("rank 1 ...", "/d", 2, 2, 50.0, ("py-spy",))
    assert "flight_recorder" not in without.to_json()
    assert Forensics.from_json(without.to_json()) == without

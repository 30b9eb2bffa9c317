"""Flight-recorder dumps, analysed by torch's own analyser, name the stuck collective."""

from __future__ import annotations

import json
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

    # Dumps older than the attempt are not this attempt's: nothing to analyse.
    env = {"TORCH_NCCL_DEBUG_INFO_TEMP_FILE": str(copied / "rank_")}
    assert flight.analyse(env, 4e9, skyguard.tmp_path / "later", 60.0) is None


def test_a_rank_that_left_no_dump_is_named() -> None:
    # What the analyser (frtrace) reports when rank 1's dump is missing, as one line.
    result = {
        "ranks": [0],
        "expected": [0, 1],
        "stuck": {
            "name": "all_reduce",
            "seq": 4,
            "group": "0:default_pg",
            "state": "scheduled",
            "missing": [],
            "where": "train.py:70 (_run_epoch)",
        },
    }
    assert flight.describe(result) == (
        "flight recorder: last collective all_reduce #4 (default_pg) at train.py:70 "
        "(_run_epoch), scheduled; no dump from rank 1"
    )
    assert flight.describe({"ranks": [0, 1], "expected": [0, 1], "stuck": None}) == (
        "flight recorder: no collective recorded"
    )


def test_the_entry_keeps_the_line_through_the_record() -> None:
    entry = Forensics("", "/state/forensics/attempt-1", 0, 0, 0.0, flight_recorder="flight ...")
    assert Forensics.from_json(json.loads(json.dumps(entry.to_json()))) == entry
    without = Forensics("rank 1 ...", "/d", 2, 2, 50.0, ("py-spy",))
    assert "flight_recorder" not in without.to_json()
    assert Forensics.from_json(without.to_json()) == without

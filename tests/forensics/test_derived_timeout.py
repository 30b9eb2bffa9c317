"""--derived-timeout-factor: the next attempt's heartbeat timeout comes from the gaps seen."""

from __future__ import annotations

import json
from pathlib import Path

from devops.skypilot.node.monitors import beat_gaps
from devops.skypilot.node.monitors.beat_gaps import Gaps
from tests.conftest import PYTHON, REPO, SkyguardRunner

PRINTER = str(REPO / "tests" / "forensics" / "printer.py")
#: A job watched by its output only; 4 s checked every 0.2 s.
WATCH = (
    "--heartbeat-timeout",
    "4",
    "--startup-grace",
    "60",
    "--progress-pattern",
    r"^step \d+ loss",
    "--derived-timeout-factor",
    "2",
)


def test_the_longest_gap_times_the_factor_never_above_the_configured() -> None:
    assert beat_gaps.derive([Gaps(4, 0.5, 0.2)], 5, 60) is None  # too few gaps yet
    timeout, how = beat_gaps.derive([Gaps(4, 0.5, 0.2), Gaps(6, 1.8, 0.2)], 5, 60) or (0, "")
    assert timeout == 5 * (1.8 + 0.2)
    assert how == (
        "heartbeat timeout 10.0s = min(60s, 5 x (1.80s longest gap + 0.20s check interval)) "
        "over 10 gaps in 2 earlier attempt(s)"
    )
    capped = beat_gaps.derive([Gaps(10, 30.0, 1.0)], 5, 60)
    assert capped is not None and capped[0] == 60
    assert beat_gaps.derive([Gaps(10, 1.0, 0.2)], 0, 60) is None


def test_an_unreadable_history_derives_nothing(tmp_path: Path) -> None:
    (tmp_path / beat_gaps.FILE).write_text("{not json")
    assert beat_gaps.load_gaps(tmp_path) == []
    beat_gaps.save_gaps(tmp_path, Gaps(3, 0.25, 0.2))
    assert beat_gaps.load_gaps(tmp_path) == [Gaps(3, 0.25, 0.2)]


def test_the_second_attempt_uses_the_timeout_derived_from_the_first(
    skyguard: SkyguardRunner,
) -> None:
    first = skyguard.run([PYTHON, PRINTER, "2"], *WATCH)
    assert (first.returncode, first.record["reason"]) == (0, "completed"), first.stderr
    [seen] = json.loads((first.state_dir / beat_gaps.FILE).read_text())
    assert seen["count"] >= beat_gaps.MIN_GAPS and seen["lag"] == 0.2
    derived = min(4.0, 2 * (seen["longest"] + seen["lag"]))
    assert derived < 4.0, seen

    second = skyguard.run([PYTHON, PRINTER, "1", "--hang"], *WATCH)
    assert second.returncode == 75, second.stderr
    record = second.record
    assert (record["reason"], record["attempt"]) == ("heartbeat_timeout", 2)
    assert f"(timeout {derived:g}s)" in record["detail"], (record["detail"], seen)
    assert f"skyguard: heartbeat timeout {derived:.1f}s = min(4s, 2 x (" in second.stderr

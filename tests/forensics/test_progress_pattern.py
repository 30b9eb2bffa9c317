"""--progress-pattern: a job that only prints progress is watched with no code change."""

from __future__ import annotations

import pytest

from devops.skypilot.node.forensics.capture import find_py_spy
from tests.conftest import PYTHON, REPO, SkyguardRunner

PRINTER = str(REPO / "tests" / "forensics" / "printer.py")
#: The startup grace covers a slow start on a loaded machine.
WATCH = (
    "--heartbeat-timeout",
    "1",
    "--startup-grace",
    "60",
    "--progress-pattern",
    r"^step \d+ loss",
)


def test_printing_progress_keeps_the_job_alive(skyguard: SkyguardRunner) -> None:
    result = skyguard.run([PYTHON, PRINTER, "2.5"], *WATCH)
    assert (result.returncode, result.record["reason"]) == (0, "completed"), result.stderr


def test_without_the_pattern_the_same_job_is_a_hang(skyguard: SkyguardRunner) -> None:
    result = skyguard.run([PYTHON, PRINTER, "2.5"], "--heartbeat-timeout", "1")
    assert (result.returncode, result.record["reason"]) == (75, "heartbeat_timeout")


@pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed (the forensics extra)")
def test_a_job_that_stops_printing_is_caught_and_its_line_named(skyguard: SkyguardRunner) -> None:
    # A job that only prints never registers the faulthandler fallback: py-spy names the line.
    result = skyguard.run([PYTHON, PRINTER, "0.5", "--hang"], *WATCH)
    assert result.returncode == 75, result.stderr
    record = result.record
    assert record["reason"] == "heartbeat_timeout"
    assert record["detail"].startswith("no heartbeat for 1.")
    assert "in time.sleep at printer.py:" in record["forensics"]["summary"]


def test_bad_patterns_are_one_line_config_errors(skyguard: SkyguardRunner) -> None:
    bad = skyguard.run(
        [PYTHON, PRINTER, "0"], "--heartbeat-timeout", "1", "--progress-pattern", "("
    )
    assert bad.returncode == 2
    assert "--progress-pattern: not a valid regular expression" in bad.stderr
    assert "Traceback" not in bad.stderr
    alone = skyguard.run([PYTHON, PRINTER, "0"], "--progress-pattern", "step")
    assert alone.returncode == 2
    assert "--progress-pattern needs --heartbeat-timeout" in alone.stderr

"""Per-rank heartbeats: every rank beats on its own file; a hang names who stopped first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devops.skypilot.heartbeat import Heartbeat, rank_file
from devops.skypilot.node.monitors.heartbeat import HeartbeatMonitor
from devops.skypilot.node.monitors.rank_beats import RankBeats
from tests.conftest import PYTHON, REPO, SkyguardRunner

LAUNCH = str(REPO / "tests" / "forensics" / "launch.py")
#: The startup grace covers slow starts on a loaded machine.
WATCH = ("--heartbeat-timeout", "1", "--startup-grace", "60")


def _beat(path: Path, pid: int) -> None:
    text = path.read_text() if path.exists() else ""
    path.write_text(f"{text}1.0 {pid} 1\n")


def test_the_client_beats_on_its_rank_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SKYGUARD_HEARTBEAT_FILE", str(tmp_path / "heartbeat"))
    monkeypatch.setenv("RANK", "3")
    assert Heartbeat().beat()
    assert rank_file(tmp_path / "heartbeat", 3) == tmp_path / "heartbeat.rank-3"
    assert (tmp_path / "heartbeat.rank-3").read_text().split()[1] == str(os.getpid())
    assert not (tmp_path / "heartbeat").exists()


def test_the_rank_that_stopped_first_is_named(tmp_path: Path) -> None:
    beats = RankBeats(tmp_path / "heartbeat")
    left_over = tmp_path / "heartbeat.rank-7"
    _beat(left_over, os.getpid())
    beats.start()
    for rank in (0, 1, 2):
        _beat(tmp_path / f"heartbeat.rank-{rank}", os.getpid())
    assert beats.scan(10.0)
    assert beats.next_deadline(5.0) == 15.0
    _beat(tmp_path / "heartbeat.rank-0", os.getpid())
    _beat(tmp_path / "heartbeat.rank-2", os.getpid())
    assert beats.scan(12.0)
    assert beats.stale(14.9, 5.0, 0.5) == ((), "")
    # Rank 7's file is from an earlier attempt: never a beat, never a hang. Rank 1
    # stopped first, but all stopped: named, not blamed (the stacks decide).
    assert beats.stale(15.0, 5.0, 0.5) == (
        (),
        "no heartbeat from rank 1 for 5.0s (timeout 5s); ranks 0, 2 stopped 2.0s+ later",
    )
    # Within the margin the order is noise: they stopped together.
    assert beats.stale(15.0, 5.0, 2.0) == (
        (),
        "no heartbeat from ranks 0, 1, 2 for 5.0s (timeout 5s), all within 2.0s of each other",
    )
    # Rank 0 still beats: rank 1 hung alone, and is blamed.
    _beat(tmp_path / "heartbeat.rank-0", os.getpid())
    assert beats.scan(14.8)
    assert beats.stale(15.0, 5.0, 0.5) == (
        (1,),
        "no heartbeat from rank 1 for 5.0s (timeout 5s); rank 2 stopped 2.0s+ later; "
        "rank 0 still beating",
    )


def test_a_rank_whose_process_is_gone_is_not_hung(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    beats = RankBeats(tmp_path / "heartbeat")
    beats.start()
    _beat(tmp_path / "heartbeat.rank-0", int(finished.stdout))
    _beat(tmp_path / "heartbeat.rank-1", os.getpid())
    beats.scan(0.0)
    # Rank 0's process is gone: only rank 1 is watched, and it stopped alone.
    assert beats.stale(100.0, 5.0, 0.5) == (
        (),
        "no heartbeat from rank 1 for 100.0s (timeout 5s), all within 0.5s of each other",
    )


def test_the_monitor_blames_the_silent_rank(tmp_path: Path) -> None:
    monitor = HeartbeatMonitor(tmp_path / "heartbeat", timeout=5.0)
    monitor.start(0.0)
    _beat(tmp_path / "heartbeat.rank-0", os.getpid())
    _beat(tmp_path / "heartbeat.rank-1", os.getpid())
    assert monitor.check(1.0) is None
    _beat(tmp_path / "heartbeat.rank-0", os.getpid())
    assert monitor.check(3.0) is None
    _beat(tmp_path / "heartbeat.rank-0", os.getpid())
    assert monitor.check(5.9) is None
    assert monitor.next_check(3.0) == 3.25  # its interval ...
    assert monitor.next_check(5.9) == 6.0  # ... or rank 1's deadline, the nearer
    verdict = monitor.check(6.0)
    assert verdict is not None and verdict.ranks == (1,)
    assert verdict.detail.startswith("no heartbeat from rank 1 for 5.0s")


def test_a_rank_that_hangs_while_the_other_beats_is_caught(skyguard: SkyguardRunner) -> None:
    result = skyguard.run([PYTHON, LAUNCH, "beating", "sleep"], *WATCH)
    assert result.returncode == 75, result.stderr
    record = result.record
    assert record["reason"] == "heartbeat_timeout"
    assert record["detail"].startswith("no heartbeat from rank 1 for 1.")
    assert "; rank 0 still beating; stacks: rank 1 (pid " in record["detail"]
    # The verdict's rank is the culprit of the stack summary too.
    assert record["forensics"]["summary"].startswith("rank 1 (pid ")
    assert "in time.sleep at hung.py" in record["forensics"]["summary"]


def test_a_rank_that_finished_early_is_not_a_hang(skyguard: SkyguardRunner) -> None:
    result = skyguard.run([PYTHON, LAUNCH, "work", "exit"], *WATCH)
    assert (result.returncode, result.record["reason"]) == (0, "completed"), result.stderr


def test_a_rank_that_never_beats_is_named(skyguard: SkyguardRunner) -> None:
    result = skyguard.run([PYTHON, LAUNCH, "beating", "silent", "beating"], *WATCH)
    assert result.returncode == 75, result.stderr
    record = result.record
    assert record["reason"] == "heartbeat_timeout"
    assert record["detail"].startswith("no first heartbeat from rank 1 (pid "), record["detail"]
    assert "after ranks 0, 2 began beating (timeout 1s)" in record["detail"]
    # Blamed: the stack summary puts it first, at its line.
    assert record["forensics"]["summary"].startswith("rank 1 (pid ")
    assert "in time.sleep at hung.py" in record["forensics"]["summary"]


def test_a_silent_rank_is_late_a_timeout_after_the_first_beat(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, "RANK": "1"}
    )
    try:
        monitor = HeartbeatMonitor(tmp_path / "heartbeat", timeout=5.0, startup_grace=20.0)
        monitor.start(0.0)
        # No rank beat yet: the startup grace holds for all.
        assert monitor.check(10.0) is None
        _beat(tmp_path / "heartbeat.rank-0", os.getpid())
        assert monitor.check(11.0) is None
        _beat(tmp_path / "heartbeat.rank-0", os.getpid())
        assert monitor.check(15.9) is None
        _beat(tmp_path / "heartbeat.rank-0", os.getpid())
        # Only rank 0 beats: a job that beats from rank 0 alone, by design.
        assert monitor.check(16.0) is None
        _beat(tmp_path / "heartbeat.rank-2", os.getpid())
        _beat(tmp_path / "heartbeat.rank-0", os.getpid())
        # Ranks 0 and 2 beat on, rank 1 (a process of the tree with RANK=1) never did.
        verdict = monitor.check(16.5)
        assert verdict is not None and verdict.ranks == (1,)
        assert verdict.detail == (
            f"no first heartbeat from rank 1 (pid {child.pid}) 5.5s after "
            "ranks 0, 2 began beating (timeout 5s)"
        )
    finally:
        child.kill()
        child.wait()

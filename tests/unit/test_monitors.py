"""Monitors in isolation: real files, time passed in explicitly (monitors never read a clock)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from devops.skypilot.common.termination import TerminationReason
from devops.skypilot.heartbeat import Heartbeat
from devops.skypilot.node.monitors import MONITOR_FACTORIES, build_monitors
from devops.skypilot.node.monitors.heartbeat import HeartbeatMonitor
from devops.skypilot.node.monitors.runtime import MaxRuntimeMonitor

R = TerminationReason


def test_heartbeat_startup_grace_then_timeout(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    monitor = HeartbeatMonitor(path, timeout=10, startup_grace=30)
    monitor.start(100.0)
    assert monitor.next_check(100.0) == pytest.approx(100.5)  # 5 % of the timeout
    assert monitor.check(125.0) is None  # inside the startup grace, no beat yet
    verdict = monitor.check(130.0)
    assert verdict is not None and verdict.reason is R.HEARTBEAT_TIMEOUT
    assert "no first heartbeat within 30s" in verdict.detail


def test_heartbeat_beats_move_the_deadline(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    beat = Heartbeat(path, min_interval=0)
    monitor = HeartbeatMonitor(path, timeout=10)
    monitor.start(0.0)
    beat.beat()
    assert monitor.check(5.0) is None  # first beat seen at t=5
    assert monitor.next_check(14.9) == pytest.approx(15.0)  # the deadline, not a poll later
    beat.beat()
    assert monitor.check(14.0) is None  # second beat seen at t=14
    assert monitor.check(23.9) is None
    verdict = monitor.check(24.0)
    assert verdict is not None and verdict.reason is R.HEARTBEAT_TIMEOUT
    assert "no heartbeat for 10.0s" in verdict.detail


def test_touch_is_a_beat(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    path.write_text("")
    monitor = HeartbeatMonitor(path, timeout=10)
    monitor.start(0.0)  # a file left from an earlier attempt is not a beat
    assert monitor.check(10.0) is not None
    monitor.start(0.0)
    os.utime(path, ns=(1, 1))
    assert monitor.check(9.0) is None and monitor.check(18.0) is None


def test_heartbeat_file_lost_after_beating(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    monitor = HeartbeatMonitor(path, timeout=10)
    monitor.start(0.0)
    Heartbeat(path).beat()
    assert monitor.check(1.0) is None
    path.unlink()
    assert monitor.check(5.0) is None  # not fatal before the deadline
    verdict = monitor.check(11.0)
    assert verdict is not None and verdict.reason is R.HEARTBEAT_UNREADABLE
    assert "errno 2" in verdict.detail


def test_max_runtime_counts_earlier_attempts() -> None:
    monitor = MaxRuntimeMonitor(max_runtime=100, used_before=70)
    monitor.start(1000.0)
    assert monitor.next_check(1000.0) == 1030.0
    assert monitor.check(1029.9) is None
    verdict = monitor.check(1030.0)
    assert verdict is not None and verdict.reason is R.MAX_RUNTIME_REACHED
    assert "70s in earlier attempts + 30s in this one" in verdict.detail


def test_registry_builds_only_enabled_monitors(tmp_path: Path) -> None:
    import argparse

    from devops.skypilot.node.config import add_run_arguments, build_config
    from devops.skypilot.node.monitors.setup import MonitorSetup

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    quiet = build_config(parser.parse_args(["--", "true"]), {})
    assert [m.name for m in build_monitors(MonitorSetup(quiet, 0))] == ["LogPatternMonitor"]
    full = build_config(
        parser.parse_args(["--heartbeat-timeout", "5", "--max-runtime", "1h", "--", "true"]), {}
    )
    names = [m.name for m in build_monitors(MonitorSetup(full, 0))]
    assert names == ["HeartbeatMonitor", "MaxRuntimeMonitor", "LogPatternMonitor"]
    assert len(MONITOR_FACTORIES) == 4  # + GpuMonitor, off without NVML


def test_heartbeat_reads_output_only_with_a_progress_pattern(tmp_path: Path) -> None:
    """Without --progress-pattern a chatty job's output is not split for it at all."""
    assert not HeartbeatMonitor(tmp_path / "hb", timeout=10).reads_output
    monitor = HeartbeatMonitor(tmp_path / "hb", timeout=10, progress=re.compile(r"^step \d+"))
    assert monitor.reads_output
    monitor.start(0.0)
    monitor.observe_output(b"loading\nnot step 3\nstep x")
    assert monitor._line_beat is None
    monitor.observe_output(b"loading\n\xffinvalid\nstep 42 loss 0.1\nmore")
    assert monitor._line_beat is not None

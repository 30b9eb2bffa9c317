"""The client training code calls: rate-limited, atomic, a no-op outside skyguard."""

from __future__ import annotations

from pathlib import Path

import pytest

from devops.skypilot import heartbeat
from devops.skypilot.heartbeat import Heartbeat


def test_no_file_configured_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKYGUARD_HEARTBEAT_FILE", raising=False)
    assert Heartbeat().beat() is False


def test_rate_limited_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    beat = Heartbeat(path, min_interval=3600)
    assert beat.beat() is True
    first = path.read_text()
    assert beat.beat() is False  # within min_interval
    assert beat.beat(force=True) is True
    assert path.read_text() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hb"]  # no temp files left


def test_interval_follows_runner_timeout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SKYGUARD_HEARTBEAT_TIMEOUT", "2")
    assert Heartbeat(tmp_path / "hb").min_interval == pytest.approx(0.2)
    monkeypatch.setenv("SKYGUARD_HEARTBEAT_TIMEOUT", "600")
    assert Heartbeat(tmp_path / "hb").min_interval == 1.0


def test_context_manager_and_callback(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    with Heartbeat(path, min_interval=0) as beat:
        assert path.exists()
        beat(step=3)  # usable as a framework callback
        count = beat.count
    assert beat.count == count + 1


def test_module_level_beat(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SKYGUARD_HEARTBEAT_FILE", str(tmp_path / "hb"))
    monkeypatch.setattr(heartbeat, "_default", None)
    assert heartbeat.beat() is True
    assert (tmp_path / "hb").read_text().split()[1].isdigit()


def test_unwritable_heartbeat_never_crashes_training(tmp_path: Path) -> None:
    beat = Heartbeat(tmp_path / "gone" / "hb", min_interval=0)
    assert beat.beat() is False  # the directory does not exist: no exception

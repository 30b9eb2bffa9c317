"""The client training code calls: rate-limited, atomic, a no-op outside skyguard."""

from __future__ import annotations

import os
import subprocess
import sys
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


def test_beat_into_a_directory_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "hb").mkdir()
    beat = Heartbeat(tmp_path / "hb", min_interval=0)
    assert [beat.beat() for _ in range(5)] == [False] * 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hb"]


FULL_DISK = """
import resource, signal, sys
from devops.skypilot.heartbeat import Heartbeat
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
beat = Heartbeat(sys.argv[1], min_interval=0)
print(sum(1 for _ in range(50) if not beat.beat()))
"""


def test_failed_writes_leave_no_temp_file(tmp_path: Path) -> None:
    """A real write failure (EFBIG: no file may grow past 0 bytes, as on a full disk)."""
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path / "hb")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    # Every write failed and none raised; each beat landed as an empty file, touched.
    assert done.stdout.strip() == "0"
    assert [p.name for p in tmp_path.iterdir()] == ["hb"]
    assert (tmp_path / "hb").stat().st_size == 0


def test_a_full_disk_still_beats_by_touching(tmp_path: Path) -> None:
    """With no space for a write, a new mtime is the beat."""
    path = tmp_path / "hb"
    path.write_bytes(b"")
    os.utime(path, ns=(0, 0))
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"  # no beat failed
    assert path.stat().st_mtime_ns > 0 and path.stat().st_size == 0
    assert [p.name for p in tmp_path.iterdir()] == ["hb"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "soon"])
def test_a_bad_timeout_variable_keeps_the_default_pace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    monkeypatch.setenv("SKYGUARD_HEARTBEAT_TIMEOUT", value)
    assert Heartbeat(tmp_path / "hb").min_interval == 1.0

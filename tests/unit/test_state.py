"""State dir: atomic writes, history, corrupt files set aside, abandoned attempts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from devops.skypilot.common.termination import Termination, TerminationReason
from devops.skypilot.node.state import (
    RunningAttempt,
    StateDir,
    abandoned_termination,
    write_json_atomic,
)


def record(
    attempt: int, reason: TerminationReason = TerminationReason.HEARTBEAT_TIMEOUT
) -> Termination:
    return Termination(
        reason=reason,
        exit_code=75,
        child_exit_code=143,
        signal="SIGTERM",
        detail="d",
        monitor="HeartbeatMonitor",
        attempt=attempt,
        started_at="s",
        ended_at="e",
        duration=10.0 * attempt,
        node_rank=0,
        task_id="t",
    )


def test_history_accumulates(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.record(record(1), [])
    state.record(record(2), state.load_history())
    history = state.load_history()
    assert [item.attempt for item in history] == [1, 2]
    data = json.loads(state.termination_file.read_text())
    assert data["attempt"] == 2 and len(data["history"]) == 2


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    write_json_atomic(target, {"v": 1})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(target, {"v": Unserialisable()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp file left


@pytest.mark.parametrize("content", ["{", "[]", '{"history": [{"reason": "x"}]}', "\x00\x01"])
def test_corrupt_history_is_set_aside(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = StateDir(tmp_path)
    state.termination_file.write_text(content)
    assert state.load_history() == []
    assert "corrupt" in caplog.text
    assert (tmp_path / "termination.json.corrupt").read_text() == content
    state.record(record(1), [])
    assert len(state.load_history()) == 1


def test_abandoned_attempt_counts_once(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.checkpoint(
        RunningAttempt(3, "2026-01-01T00:00:00+00:00", 120.5, "2026-01-01T00:02:00+00:00")
    )
    running = state.take_abandoned()
    assert running is not None and running.elapsed == 120.5
    termination = abandoned_termination(running, node_rank=0, task_id="t")
    assert termination.reason is TerminationReason.SIGNALLED and termination.duration == 120.5
    state.record(record(4), [termination])
    assert state.take_abandoned() is None  # recording drops the checkpoint


def test_corrupt_checkpoint_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "attempt.json").write_text('{"attempt": "x"}')
    assert StateDir(tmp_path).take_abandoned() is None
    assert (tmp_path / "attempt.json.corrupt").exists()


def test_unwritable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        StateDir(blocker / "sub").ensure_writable()
    assert os.listdir(tmp_path) == ["file"]

"""State dir: atomic writes, history, corrupt files set aside, abandoned attempts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from devops.skypilot.common.termination import (
    Outcome,
    RetryPolicy,
    Termination,
    TerminationReason,
    Verdict,
    decide,
)
from devops.skypilot.common.values import ConfigError
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


CHECKPOINT = {"attempt": 2, "started_at": "s", "elapsed": 5.0, "checkpointed_at": "c"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"attempt": "x"}', "missing fields"),
        ("[1]", "expected a JSON object, got [1]"),
        (json.dumps({**CHECKPOINT, "attempt": 0}), "attempt: expected a whole number >= 1"),
        (json.dumps({**CHECKPOINT, "elapsed": "5"}), "elapsed: expected a finite number"),
        (json.dumps({**CHECKPOINT, "elapsed": None}), "elapsed: expected a finite number"),
        (json.dumps({**CHECKPOINT, "pid": True}), "pid: expected a pid, got True"),
        (json.dumps({**CHECKPOINT, "pid": -1}), "pid: expected a pid"),
        (json.dumps(CHECKPOINT)[:-1] + ', "pid": 1e400}', "pid: expected a pid, got inf"),
        (json.dumps(CHECKPOINT)[:-1] + ', "elapsed": NaN}', "elapsed: expected a finite"),
        (json.dumps({**CHECKPOINT, "host": 7}), "host: expected a string"),
        (json.dumps({**CHECKPOINT, "start_ticks": 1.5}), "start_ticks: expected a whole number"),
    ],
)
def test_checkpoint_of_the_wrong_shape_is_set_aside(
    tmp_path: Path, content: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "attempt.json").write_text(content)
    assert StateDir(tmp_path).take_abandoned() is None
    assert (tmp_path / "attempt.json.corrupt").read_text() == content
    assert not (tmp_path / "attempt.json").exists()
    [report] = [r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage()]
    assert message in report and "\n" not in report


GOOD = record(1).to_json()


def _termination(data: object) -> str:
    return data if isinstance(data, str) else json.dumps(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"history": "oops"}, "history: expected a list, got 'oops'"),
        ({**GOOD, "history": [None]}, "history[0]: expected a JSON object, got None"),
        ({**GOOD, "history": [1]}, "history[0]: expected a JSON object, got 1"),
        ({**GOOD, "history": [{**GOOD, "duration": "5"}]}, "history[0]: duration: expected"),
        ({**GOOD, "history": [{**GOOD, "duration": None}]}, "duration: expected a finite"),
        ({**GOOD, "history": [{**GOOD, "duration": -1}]}, "duration: expected a finite"),
        ({**GOOD, "history": [{**GOOD, "exit_code": "75"}]}, "exit_code: expected an exit code"),
        ({**GOOD, "history": [{**GOOD, "exit_code": 300}]}, "exit_code: expected an exit code"),
        ({**GOOD, "history": [{**GOOD, "attempt": True}]}, "attempt: expected a whole number"),
        ({**GOOD, "history": [{**GOOD, "reason": "bored"}]}, "reason: expected one of"),
        ({**GOOD, "history": [{**GOOD, "reason": ["x"]}]}, "reason: expected one of"),
        ({**GOOD, "history": [{**GOOD, "signal": 15}]}, "signal: expected a string or null"),
        ({**GOOD, "history": [{**GOOD, "node_rank": -1}]}, "node_rank: expected a whole number"),
        ({**GOOD, "exit_code": None, "history": [GOOD]}, "exit_code: expected an exit code"),
        ({**GOOD, "history": [{**GOOD, "forensics": "x"}]}, "forensics: expected a JSON object"),
        ({**GOOD, "history": [{**GOOD, "forensics": {"summary": 1}}]}, "forensics: missing"),
        ('{"history": [{"duration": NaN}]}', "history[0]: missing fields"),
        ("[null]", "expected a JSON object, got [None]"),
    ],
)
def test_history_of_the_wrong_shape_is_set_aside(
    tmp_path: Path, data: object, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = StateDir(tmp_path)
    content = _termination(data)
    state.termination_file.write_text(content)
    state.load_history()  # never raises
    assert (tmp_path / "termination.json.corrupt").read_text() == content
    [report] = [r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage()]
    assert message in report and "\n" not in report


def test_the_readable_part_of_a_bad_history_is_kept(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    bad = {**record(2).to_json(), "duration": "5"}
    good = record(3).to_json()
    state.termination_file.write_text(json.dumps({**good, "history": [GOOD, bad, good]}))
    history = state.with_lost_attempts(state.load_history(), node_rank=0, task_id="t")
    assert [(item.attempt, item.reason.value) for item in history] == [
        (1, "heartbeat_timeout"),
        (2, "record_lost"),
        (3, "heartbeat_timeout"),
    ]


def test_a_corrupt_state_dir_every_attempt_still_ends_in_crash_loop(tmp_path: Path) -> None:
    """Corrupted before each attempt, the history cannot be read, yet the attempts
    it had (their logs are there) keep spending the budget: no endless retries."""
    state = StateDir(tmp_path)
    policy = RetryPolicy(max_retries=3, crash_loop_window=0)
    hung = Outcome(143, Verdict(TerminationReason.HEARTBEAT_TIMEOUT, "hang"), duration=600)
    codes = []
    for attempt in range(1, 6):
        state.termination_file.write_text('{"history": [ truncated by a bad upload')
        state = StateDir(tmp_path)
        history = state.with_lost_attempts(state.load_history(), 0, "t")
        assert max((item.attempt for item in history), default=0) + 1 == attempt
        decision = decide(hung, [item.summary() for item in history], policy)
        codes.append(decision.exit_code)
        state.log_file(attempt).parent.mkdir(exist_ok=True)
        state.log_file(attempt).write_text("")
        state.record(record(attempt, decision.reason), history)
    assert codes == [75, 75, 75, 125, 125]
    asides = sorted(p.name for p in tmp_path.iterdir() if ".corrupt" in p.name)
    assert asides == [
        "termination.json.corrupt",
        *(f"termination.json.corrupt.{n}" for n in (2, 3, 4, 5)),
    ]


def test_nothing_set_aside_means_no_lost_attempts(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "attempt-7.log").write_text("")
    assert state.with_lost_attempts(state.load_history(), 0, "t") == []


def test_an_unreadable_state_file_is_one_config_error(tmp_path: Path) -> None:
    (tmp_path / "termination.json").mkdir()
    with pytest.raises(ConfigError, match=r"cannot read .*termination\.json"):
        StateDir(tmp_path).load_history()


def test_unwritable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        StateDir(blocker / "sub").ensure_writable()
    assert os.listdir(tmp_path) == ["file"]

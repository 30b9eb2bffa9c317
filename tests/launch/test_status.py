"""``skyguard status`` offline: attempt history from a real runner's state dir and log lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from devops.skypilot.client import status
from devops.skypilot.common.termination import EXIT_CONFIG_ERROR, EXIT_RETRY

REPO = Path(__file__).resolve().parents[2]
TASK_ID = "sky-managed-2026-01-02-03-04-05-123456_exp-7_42-0"


def run_status(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devops.skypilot", "status", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def two_attempts(skyguard, root: Path) -> tuple[Path, list[str]]:
    """Attempt 1 hangs (exit 75), attempt 2 succeeds: the layout job.yaml uses."""
    state_dir = root / TASK_ID / "node-0"
    train = [
        sys.executable,
        str(REPO / "examples" / "train.py"),
        "--steps",
        "3",
        "--step-time",
        "0.05",
        "--hang-after",
        "1",
        "--only-attempts",
        "1",
    ]
    env = {"SKYPILOT_TASK_ID": TASK_ID}
    first = skyguard.run(
        train, "--heartbeat-timeout", "1", "--grace", "1", state_dir=state_dir, env=env
    )
    assert first.returncode == EXIT_RETRY, first.stderr
    # No heartbeat deadline: the second attempt must complete however slowly it starts.
    second = skyguard.run(train, state_dir=state_dir, env=env)
    assert second.returncode == 0, second.stderr
    return state_dir, (first.stderr + second.stderr).splitlines()


def test_history_comes_from_the_state_root(skyguard, tmp_path: Path) -> None:
    two_attempts(skyguard, tmp_path / "state")
    result = run_status("exp-7", "--offline", "--state-dir", str(tmp_path / "state"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(r["attempt"], r["reason"], r["exit_code"]) for r in report["history"]] == [
        (1, "heartbeat_timeout", EXIT_RETRY),
        (2, "completed", 0),
    ]
    assert report["last"]["reason"] == "completed"
    assert report["source"].endswith(f"{TASK_ID}/node-0/termination.json")

    text = run_status("exp-7", "--offline", "--state-dir", str(tmp_path / "state"))
    assert text.returncode == 0
    assert "heartbeat_timeout" in text.stdout and "completed" in text.stdout
    assert "attempts    2" in text.stdout


def test_history_comes_from_the_runners_log_lines(skyguard, tmp_path: Path) -> None:
    _, lines = two_attempts(skyguard, tmp_path / "state")
    # As SkyPilot relays them: each line prefixed by the task and pid.
    relayed = [f"(task, pid=123) {line}" for line in lines] + ["skyguard: termination {broken"]
    records = status.records_from_log(relayed)
    assert [r["reason"] for r in records] == ["heartbeat_timeout", "completed"]
    # Records carry the run key: the task id without the jobs controller's timestamp.
    assert records[0]["task_id"] == records[1]["task_id"] == "exp-7_42-0"


def test_a_run_dir_itself_can_be_given(skyguard, tmp_path: Path) -> None:
    state_dir, _ = two_attempts(skyguard, tmp_path / "state")
    found = status.find_termination_file(state_dir, "exp-7", None)
    assert found == state_dir / "termination.json"
    assert status.find_termination_file(tmp_path / "state", "exp-7", 42) == found
    assert status.find_termination_file(tmp_path / "state", "exp-7", 41) is None
    assert status.find_termination_file(tmp_path / "state", "exp", None) is None


def test_bad_input_and_missing_records(tmp_path: Path) -> None:
    bad = run_status("bad name", "--offline", "--state-dir", str(tmp_path))
    assert bad.returncode == EXIT_CONFIG_ERROR
    assert bad.stderr.strip().startswith("skyguard status: error: RUN_ID 'bad name'")
    no_dir = run_status("exp-7", "--offline")
    assert no_dir.returncode == EXIT_CONFIG_ERROR
    assert "--offline needs --state-dir" in no_dir.stderr
    missing = run_status("exp-7", "--offline", "--state-dir", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert "no such directory" in missing.stderr
    empty = run_status("exp-7", "--offline", "--state-dir", str(tmp_path))
    assert empty.returncode == 1
    assert "no attempts recorded" in empty.stderr
    corrupt = tmp_path / "termination.json"
    corrupt.write_text("{not json")
    broken = run_status("exp-7", "--offline", "--state-dir", str(tmp_path))
    assert broken.returncode == 1
    assert "is not valid JSON" in broken.stderr
    for result in (bad, no_dir, missing, empty, broken):
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def record(path: Path, ended_at: str, reason: str) -> None:
    path.mkdir(parents=True)
    entry = {"attempt": 1, "reason": reason, "exit_code": 0, "ended_at": ended_at}
    (path / "termination.json").write_text(json.dumps({**entry, "history": [entry]}))


def test_run_key_dirs_are_found_and_the_latest_launch_wins(tmp_path: Path) -> None:
    """State dirs are named by the run key: <run>-<8 hex> (skyguard launch), or the
    managed job's <run>_<job id>-<task> (plain `sky jobs launch`)."""
    root = tmp_path / "state"
    record(root / "exp-7-0a1b2c3d" / "node-0", "2026-01-02T10:00:00+00:00", "job_failed")
    record(root / "exp-7-ffff0000" / "node-0", "2026-01-03T09:00:00+00:00", "completed")
    record(root / "exp-7-older" / "node-0", "2027-01-01T00:00:00+00:00", "not this run")
    record(root / "exp-77-01234567" / "node-0", "2027-01-01T00:00:00+00:00", "not this run")
    latest = status.find_termination_file(root, "exp-7", None)
    assert latest == root / "exp-7-ffff0000" / "node-0" / "termination.json"
    record(root / "train_42-0" / "node-0", "2026-01-01T00:00:00+00:00", "completed")
    record(root / "train_43-0" / "node-0", "2026-01-05T00:00:00+00:00", "completed")
    assert status.find_termination_file(root, "train", 42) == (
        root / "train_42-0" / "node-0" / "termination.json"
    )
    assert status.find_termination_file(root, "train", None) == (
        root / "train_43-0" / "node-0" / "termination.json"
    )


def test_history_of_a_run_launched_with_a_run_key(skyguard, tmp_path: Path) -> None:
    """The runner as job.yaml runs it: state root + stamped key -> <root>/<key>/node-0."""
    env = {
        "SKYGUARD_STATE_ROOT": str(tmp_path / "state"),
        "SKYGUARD_RUN_KEY": "exp-7-0a1b2c3d",
        "SKYPILOT_TASK_ID": TASK_ID,
    }
    process = skyguard.start(["--", sys.executable, "-c", "pass"], env)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    result = run_status("exp-7", "--offline", "--state-dir", str(tmp_path / "state"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"].endswith("exp-7-0a1b2c3d/node-0/termination.json")
    assert report["last"]["task_id"] == "exp-7-0a1b2c3d"

"""The runner against real processes, signals and process trees.

Speed is measured in benchmarks/, not asserted here: bounds below only keep a
broken runner from hanging the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import PYTHON, REPO, TRAIN, SkyguardRunner

CHILDREN = str(REPO / "tests" / "integration" / "children.py")


def child(*args: str) -> list[str]:
    return [PYTHON, CHILDREN, *args]


def train(*args: str) -> list[str]:
    return [PYTHON, TRAIN, "--step-time", "0.05", *args]


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_success_is_recorded_and_output_is_teed(skyguard: SkyguardRunner) -> None:
    result = skyguard.run(train("--steps", "3"))
    assert result.returncode == 0, result.stderr
    assert "train: done" in result.stdout  # our stdout
    record = result.record
    assert (record["reason"], record["exit_code"], record["child_exit_code"]) == ("completed", 0, 0)
    assert record["attempt"] == 1 and len(record["history"]) == 1
    log = (result.state_dir / "logs" / "attempt-1.log").read_text()
    assert "train: step 3" in log and "train: done" in log
    assert '"reason": "completed"' in result.stderr  # the one-line record for `sky logs`


@pytest.mark.parametrize(("code", "expected"), [(3, 3), (1, 1), (75, 1)])
def test_failure_passes_the_code_through(
    skyguard: SkyguardRunner, code: int, expected: int
) -> None:
    result = skyguard.run(child("exit", str(code)))
    assert result.returncode == expected
    assert result.record["reason"] == "job_failed"
    assert result.record["child_exit_code"] == code


@pytest.mark.parametrize(("name", "code"), [("SIGKILL", 137), ("SIGSEGV", 139)])
def test_signal_death_is_decoded(skyguard: SkyguardRunner, name: str, code: int) -> None:
    result = skyguard.run(child("signal", name))
    assert result.returncode == code
    record = result.record
    assert (record["reason"], record["signal"], record["child_exit_code"]) == (
        "job_failed",
        name,
        code,
    )
    assert name in record["detail"]


def test_hang_is_detected_and_retried(skyguard: SkyguardRunner) -> None:
    result = skyguard.run(train("--hang-after", "2"), "--heartbeat-timeout", "1", "--grace", "5")
    assert result.returncode == 75, result.stderr
    record = result.record
    assert (record["reason"], record["monitor"]) == ("heartbeat_timeout", "HeartbeatMonitor")
    assert record["signal"] == "SIGTERM" and record["child_exit_code"] == 143, result.stderr


def test_sigterm_ignoring_child_is_killed_after_grace(skyguard: SkyguardRunner) -> None:
    result = skyguard.run(
        train("--hang-after", "1", "--ignore-sigterm"),
        "--heartbeat-timeout",
        "1",
        "--grace",
        "1",
    )
    assert result.returncode == 75
    assert result.record["signal"] == "SIGKILL" and result.record["child_exit_code"] == 137
    assert "still alive 1s after SIGTERM; sending SIGKILL" in result.stderr


def test_double_forked_daemon_is_gone_after_exit(skyguard: SkyguardRunner, tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    result = skyguard.run(child("double-fork", str(pid_file)), "--grace", "1")
    assert result.returncode == 0
    daemon = int(pid_file.read_text())
    assert not psutil.pid_exists(daemon) or psutil.Process(daemon).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_runner_signal_stops_the_tree(
    skyguard: SkyguardRunner, tmp_path: Path, signum: int
) -> None:
    state = tmp_path / "state"
    process = skyguard.start(
        ["--state-dir", str(state), "--grace", "5", "--", *train("--steps", "100000")]
    )
    try:
        wait_for(lambda: (state / "heartbeat").exists())
        process.send_signal(signum)
        _stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 75, stderr
    record = (state / "termination.json").read_text()
    assert '"reason": "signalled"' in record and signal.Signals(signum).name in record


def test_max_runtime_is_summed_across_attempts(skyguard: SkyguardRunner, tmp_path: Path) -> None:
    env = {"SKYPILOT_TASK_ID": "sky-managed-test_budget_1-0"}
    state = tmp_path / "state"
    budget = ("--max-runtime", "3")
    hang = ("--heartbeat-timeout", "1")
    first = skyguard.run(train("--hang-after", "5"), *budget, *hang, state_dir=state, env=env)
    assert first.returncode == 75
    used = first.record["duration"]
    # No heartbeat deadline from here on: only the budget may end these attempts, however
    # slowly a loaded machine starts the command.
    second = skyguard.run(train("--steps", "100000"), *budget, state_dir=state, env=env)
    assert second.returncode == 124, second.stderr
    record = second.record
    assert record["reason"] == "max_runtime_reached" and record["attempt"] == 2
    assert record["duration"] < 3 and used + record["duration"] >= 3
    third = skyguard.run(train("--steps", "1"), *budget, state_dir=state, env=env)
    assert third.returncode == 124 and "not starting" in third.record["detail"]
    assert "train:" not in third.stdout
    assert [item["attempt"] for item in third.record["history"]] == [1, 2, 3]


def test_retry_budget_ends_in_crash_loop(skyguard: SkyguardRunner, tmp_path: Path) -> None:
    state = tmp_path / "state"
    options = ("--heartbeat-timeout", "0.5", "--max-retries", "2", "--crash-loop-window", "0")
    codes = [
        skyguard.run(train("--hang-after", "1"), *options, state_dir=state).returncode
        for _ in range(3)
    ]
    assert codes == [75, 75, 125]
    record = (state / "termination.json").read_text()
    assert '"reason": "crash_loop"' in record and "retry budget spent" in record


def test_short_failures_in_a_row_are_a_crash_loop(skyguard: SkyguardRunner, tmp_path: Path) -> None:
    state = tmp_path / "state"
    options = ("--crash-loop-count", "2", "--crash-loop-window", "10m")
    first = skyguard.run(train("--oom-after", "1"), *options, state_dir=state)
    assert first.returncode == 75 and first.record["reason"] == "cuda_error"
    assert "CUDA out of memory" in first.record["detail"]
    assert first.record["child_exit_code"] == 1
    second = skyguard.run(train("--oom-after", "1"), *options, state_dir=state)
    assert second.returncode == 125
    assert second.record["reason"] == "crash_loop" and "crash loop" in second.record["detail"]


def test_a_stalled_attempt_log_hides_no_fatal_line(
    skyguard: SkyguardRunner, tmp_path: Path
) -> None:
    """A log write that never returns (a hung bucket mount) holds up neither the copy
    nor the monitors: the OOM line still explains the end, which is retried, and the
    log is given up as incomplete. The log is a full FIFO nobody reads, so every write
    to it blocks, on any machine, however loaded."""
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    log = state / "logs" / "attempt-1.log"
    os.mkfifo(log)
    stalled = os.open(log, os.O_RDWR | os.O_NONBLOCK)  # the reader that never reads
    try:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(stalled, b"x" * 65536)
        result = skyguard.run(train("--oom-after", "1"), state_dir=state)
    finally:
        os.close(stalled)
    assert result.returncode == 75, result.stderr
    assert result.record["reason"] == "cuda_error"
    assert "CUDA out of memory" in result.record["detail"]
    assert "train: step 1" in result.stdout
    assert "attempt log incomplete: attempt-1.log" in result.record["detail"]
    assert "(its storage stalled)" in result.record["detail"]


def test_fatal_line_stops_a_running_job(skyguard: SkyguardRunner) -> None:
    line = (
        "[rank1]:[E626 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective operation "
        "timeout: WorkNCCL(SeqNum=808, OpType=ALLREDUCE, Timeout(ms)=600000) ran for 600020 "
        "milliseconds before timing out."
    )
    result = skyguard.run(child("print-then-sleep", line), "--grace", "2")
    assert result.returncode == 75
    record = result.record
    assert (record["reason"], record["monitor"]) == ("nccl_error", "LogPatternMonitor")
    assert "ProcessGroupNCCL.cpp:616" in record["detail"]


def test_corrupt_record_at_start_is_replaced(skyguard: SkyguardRunner, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "termination.json").write_text('{"history": [{"reason": ')
    result = skyguard.run(child("exit", "0"), state_dir=state)
    assert result.returncode == 0
    assert "corrupt" in result.stderr
    assert result.record["attempt"] == 1
    assert (state / "termination.json.corrupt").exists()


def _unwritable(tmp_path: Path) -> str:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    return str(blocker / "state")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus", "--", "true"], "unrecognized arguments: --bogus"),
        (["--grace", "-5", "--", "true"], "--grace: duration must not be negative"),
        (["--heartbeat-timeout", "5 minutes", "--", "true"], "not a duration"),
        (["--"], "no command given"),
        (["--", "no-such-command-xyz"], "command not found on PATH: no-such-command-xyz"),
        (["--state-dir", "UNWRITABLE", "--", "true"], "is not writable"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    skyguard: SkyguardRunner, tmp_path: Path, argv: list[str], message: str
) -> None:
    argv = [_unwritable(tmp_path) if arg == "UNWRITABLE" else arg for arg in argv]
    if "--state-dir" not in argv:
        argv = ["--state-dir", str(tmp_path / "state"), *argv]
    process = skyguard.start(argv)
    _stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "state" / "termination.json").exists()


SCRIPT = """
import sys
from devops.skypilot.node.config import build_config, add_run_arguments
from devops.skypilot.common.lifecycle import RunObserver
from devops.skypilot.node.monitors.base import Monitor
from devops.skypilot.node.runner import Runner, RunnerExtensions
import argparse

class BrokenMonitor(Monitor):
    interval = 0.05
    def check(self, now):
        raise RuntimeError("monitor bug")

class BrokenObserver(RunObserver):
    def on_start(self, ctx):
        raise RuntimeError("observer bug at start")
    def on_end(self, ctx, termination):
        raise RuntimeError("observer bug at end")

parser = argparse.ArgumentParser()
add_run_arguments(parser)
config = build_config(parser.parse_args(sys.argv[1:]), {})
ext = RunnerExtensions(observers=[BrokenObserver()], monitors=[BrokenMonitor()])
sys.exit(Runner(config, ext).run().exit_code)
"""


def test_broken_monitor_and_observer_do_not_hurt_the_job(
    skyguard: SkyguardRunner, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    process = subprocess.run(
        [PYTHON, "-c", SCRIPT, "--state-dir", str(state), "--", *train("--steps", "4")],
        env=skyguard.env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert process.returncode == 0, process.stderr
    assert "monitor BrokenMonitor raised; disabling it" in process.stderr
    assert "BrokenObserver.on_start failed" in process.stderr
    assert "BrokenObserver.on_end failed" in process.stderr
    assert '"reason": "completed"' in (state / "termination.json").read_text()


def test_dry_run_starts_nothing(skyguard: SkyguardRunner, tmp_path: Path) -> None:
    process = skyguard.start(
        ["--state-dir", str(tmp_path / "s"), "--dry-run", "--", sys.executable, "-V"]
    )
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert '"heartbeat_timeout": 0.0' in stdout
    assert not (tmp_path / "s").exists()


def test_managed_job_with_local_state_is_warned_about(skyguard: SkyguardRunner) -> None:
    env = {"SKYPILOT_MANAGED_JOB_ID": "3", "SKYPILOT_TASK_ID": "sky-managed-x_y_3-0"}
    result = skyguard.run(child("exit", "0"), env=env)
    assert result.returncode == 0
    assert "is on local disk" in result.stderr and "reset when SkyPilot recovers" in result.stderr
    quiet = skyguard.run(child("exit", "0"), state_dir=skyguard.tmp_path / "other")
    assert "local disk" not in quiet.stderr  # not a managed job: nothing to lose


def test_lost_state_dir_still_exits_with_the_decided_code(
    skyguard: SkyguardRunner, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    process = skyguard.start(
        ["--state-dir", str(state), "--heartbeat-timeout", "1", "--", *train("--hang-after", "2")]
    )
    try:
        wait_for(lambda: (state / "heartbeat").exists())
        # Replace the state dir by a file: nothing can be written there any more.
        shutil.rmtree(state)
        state.write_text("not a directory")
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 75, stderr
    assert "could not write" in stderr
    # The heartbeat file lived there too; the record still reaches the job log.
    assert '"reason": "heartbeat_unreadable"' in stderr and "errno 20" in stderr


def test_second_runner_on_the_same_state_dir_is_refused(
    skyguard: SkyguardRunner, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = skyguard.start(["--state-dir", str(state), "--", *train("--steps", "100000")])
    try:
        wait_for(lambda: (state / "attempt.json").exists())
        second = skyguard.run(child("exit", "0"), state_dir=state)
        assert second.returncode == 2
        assert "is in use by another runner" in second.stderr
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 75, stderr
    history = json.loads((state / "termination.json").read_text())["history"]
    assert [item["attempt"] for item in history] == [1]  # the refused runner wrote nothing

"""`skyguard run` on real hung ranks: the record names the culprit rank and its line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from devops.skypilot.node.forensics.capture import find_py_spy
from tests.conftest import PYTHON, REPO, SkyguardRunner

LAUNCH = str(REPO / "tests" / "forensics" / "launch.py")
HUNG = REPO / "tests" / "forensics" / "hung.py"
#: The startup grace covers slow starts on a loaded machine; the hang itself is
#: caught 1 s after the ranks' last beat.
HANG = ("--heartbeat-timeout", "1", "--startup-grace", "60", "--forensics-timeout", "3")


def _line_of(text: str) -> int:
    lines = HUNG.read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def _termination_line(stderr: str) -> dict[str, object]:
    line = next(line for line in stderr.splitlines() if line.startswith("skyguard: termination "))
    data: dict[str, object] = json.loads(line.removeprefix("skyguard: termination "))
    return data


def test_a_hung_rank_is_named_before_the_kill(skyguard: SkyguardRunner) -> None:
    result = skyguard.run([PYTHON, LAUNCH, "collective", "sleep"], *HANG)
    assert result.returncode == 75, result.stderr
    record = result.record
    assert record["reason"] == "heartbeat_timeout"
    forensics = record["forensics"]
    sleep_line = _line_of("time.sleep(3600)")
    assert forensics["summary"].startswith("rank 1 (pid ")
    assert (
        f"in time.sleep at hung.py:{sleep_line} (_run_epoch); rank 0: in os.read"
        in (forensics["summary"])
    )
    # Both ranks and the launcher were looked at; the ranks had stacks.
    assert forensics["processes"] == 3 and forensics["captured"] >= 2
    assert f"stacks: {forensics['summary']}" in record["detail"]
    assert _termination_line(result.stderr)["forensics"] == forensics
    stacks = Path(forensics["directory"]) / "stacks.txt"
    assert stacks.read_text().startswith(forensics["summary"] + "\n")
    assert forensics["directory"] == str(result.state_dir / "forensics" / "attempt-1")
    state = str(result.state_dir)
    status = subprocess.run(
        [PYTHON, "-m", "devops.skypilot", "status", "exp", "--offline", "--state-dir", state],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"stacks: {forensics['summary']}" in status.stdout, status.stderr


def test_a_rank_that_ignores_sigterm_is_named_and_then_killed(skyguard: SkyguardRunner) -> None:
    result = skyguard.run([PYTHON, LAUNCH, "noterm", "collective"], *HANG, "--grace", "0.5")
    assert result.returncode == 75, result.stderr
    assert result.record["forensics"]["summary"].startswith("rank 0 (pid ")
    assert "SIGKILL" in result.stderr  # the leak check proves the tree is gone


def test_a_hanging_py_spy_does_not_hold_the_stop(skyguard: SkyguardRunner, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "py-spy").write_text("#!/bin/sh\nexec sleep 60\n")
    (bin_dir / "py-spy").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = skyguard.run(
        [PYTHON, LAUNCH, "collective", "syscall"],
        "--heartbeat-timeout",
        "1",
        "--startup-grace",
        "60",
        "--forensics-timeout",
        "2",
        env=env,
    )
    assert result.returncode == 75, result.stderr
    forensics = result.record["forensics"]
    # faulthandler answered for the ranks; py-spy was killed at the bound.
    assert forensics["sources"] == ["faulthandler"]
    assert forensics["summary"].startswith("rank 1 (pid ")
    assert "in libc.select at hung.py" in forensics["summary"]
    # The launcher never registered a dump: py-spy was its only way.
    stacks = (Path(forensics["directory"]) / "stacks.txt").read_text()
    assert "no stack (py-spy timed out)" in stacks
    # The bound, on the runner's own clock: it waited for the hung py-spy until the
    # deadline, not past it (the slack only keeps a broken kill from hanging the
    # suite), and the stop came after the capture.
    assert 2000 <= forensics["elapsed_ms"] < 3000
    lines = result.stderr.splitlines()
    captured = next(i for i, line in enumerate(lines) if line.startswith("skyguard: stacks ("))
    stop = next(i for i, line in enumerate(lines) if "processes with SIGTERM" in line)
    assert captured < stop
    assert "skyguard: py-spy gave no stack for 3 of 3 process(es): timed out" in result.stderr


def test_no_capture_for_a_crash_a_success_or_when_turned_off(
    skyguard: SkyguardRunner, tmp_path: Path
) -> None:
    crashed = skyguard.run(
        [PYTHON, "-c", "raise SystemExit(3)"], *HANG, state_dir=tmp_path / "crashed"
    )
    assert (crashed.returncode, crashed.record["forensics"]) == (3, None)
    succeeded = skyguard.run([PYTHON, "-c", "pass"], *HANG, state_dir=tmp_path / "succeeded")
    assert (succeeded.returncode, succeeded.record["forensics"]) == (0, None)
    off = skyguard.run(
        [PYTHON, LAUNCH, "sleep"],
        "--heartbeat-timeout",
        "1",
        "--startup-grace",
        "60",
        "--forensics-timeout",
        "0",
        state_dir=tmp_path / "off",
    )
    assert (off.returncode, off.record["forensics"]) == (75, None)
    for result in (crashed, succeeded, off):
        assert not (result.state_dir / "forensics" / "attempt-1" / "stacks.txt").exists()


def test_py_spy_is_used_where_installed(skyguard: SkyguardRunner) -> None:
    if find_py_spy() is None:
        pytest.skip("py-spy is not installed (the forensics extra)")
    result = skyguard.run([PYTHON, LAUNCH, "sleep", "collective"], *HANG)
    forensics = result.record["forensics"]
    assert forensics["sources"] == ["py-spy"]
    assert forensics["summary"].startswith("rank 0 (pid ")


def _py_spy_cannot_attach() -> str | None:
    """Why py-spy cannot read a process here (ptrace forbidden, say); None if it can."""
    py_spy = find_py_spy()
    if py_spy is None:
        return "py-spy is not installed (the forensics extra)"
    sleeper = subprocess.Popen(
        [PYTHON, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sleeper.stdout is not None and sleeper.stdout.readline() == "ready\n"
        probe = subprocess.run(
            [py_spy, "dump", "--pid", str(sleeper.pid)], capture_output=True, text=True, timeout=30
        )
    finally:
        sleeper.kill()
        sleeper.wait()
        sleeper.stdout.close()  # type: ignore[union-attr]
    return None if probe.returncode == 0 else f"py-spy cannot attach here: {probe.stderr[:200]}"


@pytest.mark.parametrize(
    ("mode", "call", "function"),
    [
        ("syscall", "libc.select(", "blocking_select"),
        ("lock", "lock.acquire(blocking=True)", "take_twice"),
    ],
)
def test_a_rank_blocked_in_c_is_read_by_py_spy_while_the_other_beats(
    skyguard: SkyguardRunner, mode: str, call: str, function: str
) -> None:
    why_not = _py_spy_cannot_attach()
    if why_not is not None:
        pytest.skip(why_not)
    result = skyguard.run([PYTHON, LAUNCH, mode, "beating"], *HANG)
    assert result.returncode == 75, result.stderr
    record = result.record
    assert re.match(
        r"no heartbeat from rank 0 for \d+\.\ds \(timeout 1s\); rank 1 still beating;",
        record["detail"],
    ), record["detail"]
    summary = record["forensics"]["summary"]
    callee = call.split("(")[0]
    # The blocked rank first, in its C call at its innermost Python line; rank 1
    # was beating, caught anywhere in its loop.
    assert re.fullmatch(
        rf"rank 0 \(pid (\d+)\) in {re.escape(callee)} at hung\.py:{_line_of(call)} "
        rf"\({function}\); rank 1: .+",
        summary,
    ), summary
    directory = Path(record["forensics"]["directory"])
    stacks = (directory / "stacks.txt").read_text()
    # py-spy read it, and so the rank was never sent the faulthandler's signal: that
    # would have woken its C call (select returns EINTR) under py-spy's eyes.
    pid = re.search(r"^rank 0 pid (\d+) \(py-spy\):$", stacks, re.M)
    assert pid is not None, stacks
    assert (directory / f"faulthandler-{pid.group(1)}.txt").read_text() == ""


def test_a_collective_timeout_line_captures_the_stacks(skyguard: SkyguardRunner) -> None:
    """nccl_error from the log, the command still running: its processes are looked at."""
    line = (
        "[rank1]:[E626 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective operation "
        "timeout: WorkNCCL(SeqNum=808, OpType=ALLREDUCE, Timeout(ms)=600000) ran for 600020 "
        "milliseconds before timing out."
    )
    children = str(REPO / "tests" / "integration" / "children.py")
    result = skyguard.run([PYTHON, children, "print-then-sleep", line], "--grace", "2")
    assert result.returncode == 75, result.stderr
    record = result.record
    assert (record["reason"], record["monitor"]) == ("nccl_error", "LogPatternMonitor")
    forensics = record["forensics"]
    # No launcher, no RANK: the one process by pid, caught printing or asleep after it.
    assert re.fullmatch(r"pid \d+: in \S+ at children\.py:\d+ \(main\)", forensics["summary"])
    assert forensics["captured"] == forensics["processes"] == 1
    assert record["detail"].endswith(f"; stacks: {forensics['summary']}")


def test_without_py_spy_faulthandler_answers_within_the_bound(
    skyguard: SkyguardRunner, tmp_path: Path
) -> None:
    """The runner finds py-spy on PATH or beside its interpreter: neither has one here."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("needs a virtual environment to copy without py-spy")
    venv = tmp_path / "venv"  # this interpreter and its packages, no py-spy beside it
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(PYTHON)
    shutil.copy(Path(sys.prefix) / "pyvenv.cfg", venv)
    (venv / "lib").symlink_to(Path(sys.prefix) / "lib")
    path = [d for d in os.environ["PATH"].split(os.pathsep) if not shutil.which("py-spy", path=d)]

    @dataclass
    class WithoutPySpy(SkyguardRunner):
        def argv(self, args: Sequence[str]) -> list[str]:
            return [str(venv / "bin" / "python"), *super().argv(args)[1:]]

    runner = WithoutPySpy(skyguard.tmp_path, skyguard.tag)
    result = runner.run(
        [PYTHON, LAUNCH, "collective", "sleep"], *HANG, env={"PATH": os.pathsep.join(path)}
    )
    assert result.returncode == 75, result.stderr
    forensics = result.record["forensics"]
    assert forensics["sources"] == ["faulthandler"]
    assert forensics["summary"].startswith("rank 1 (pid ")
    assert (
        f"in time.sleep at hung.py:{_line_of('time.sleep(3600)')} (_run_epoch)"
        in (forensics["summary"])
    )
    stacks = (Path(forensics["directory"]) / "stacks.txt").read_text()
    assert (
        len(re.findall(r"^rank \d pid \d+ \(faulthandler; py-spy not installed\):$", stacks, re.M))
        == 2
    )
    # The launcher never registered a dump: no way left to read it.
    assert re.search(r"^pid \d+: no stack \(py-spy not installed\)$", stacks, re.M), stacks
    # The bound (3 s; the slack only keeps a broken kill from hanging the suite), and
    # the stop came after the capture.
    assert forensics["elapsed_ms"] < 3000 + 1000
    lines = result.stderr.splitlines()
    captured = next(i for i, line in enumerate(lines) if line.startswith("skyguard: stacks ("))
    stop = next(i for i, line in enumerate(lines) if "processes with SIGTERM" in line)
    assert captured < stop

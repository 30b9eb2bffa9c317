"""A live runner is a pid with its start time on this host and boot, never a name."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from devops.skypilot.node.liveness import ProcessStamp
from devops.skypilot.node.state import RunningAttempt


@pytest.fixture
def lookalike() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line says "skyguard"."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "skyguard"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_a_live_process_matches_its_own_stamp(lookalike: subprocess.Popen[bytes]) -> None:
    stamp = ProcessStamp.of(lookalike.pid)
    assert stamp is not None and stamp.start_ticks > 0
    assert stamp.alive()


@pytest.mark.parametrize(
    "change",
    [
        {"start_ticks": -1},  # the pid now belongs to a process started at another time
        {"host": "another-host"},
        {"boot_id": "another-boot"},
    ],
)
def test_a_reused_pid_or_another_machine_is_not_the_runner(
    lookalike: subprocess.Popen[bytes], change: dict[str, object]
) -> None:
    stamp = ProcessStamp.of(lookalike.pid)
    assert stamp is not None
    if change.get("start_ticks") == -1:
        change = {"start_ticks": stamp.start_ticks + 1}
    assert not dataclasses.replace(stamp, **change).alive()  # type: ignore[arg-type]


def test_an_ended_process_is_not_alive() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    stamp = ProcessStamp.of(process.pid)
    assert stamp is not None
    # Wait for the exit but leave the child unreaped: a zombie has ended too.
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    assert not stamp.alive()
    process.wait()
    assert not stamp.alive()


def test_the_checkpoint_names_this_runner_and_a_leftover_is_judged_by_it(
    lookalike: subprocess.Popen[bytes],
) -> None:
    mine = RunningAttempt.by_this_runner(1, "s", 0.0, "c")
    assert (mine.pid, mine.start_ticks > 0) == (os.getpid(), True)
    assert not mine.runner_alive()  # our own checkpoint never refuses us
    stamp = ProcessStamp.of(lookalike.pid)
    assert stamp is not None
    theirs = dataclasses.replace(
        mine, host=stamp.host, pid=stamp.pid, boot_id=stamp.boot_id, start_ticks=stamp.start_ticks
    )
    assert theirs.runner_alive()
    assert not dataclasses.replace(theirs, start_ticks=stamp.start_ticks - 1).runner_alive()
    # Written by an older skyguard (no start time): cannot be proven alive.
    assert not dataclasses.replace(theirs, boot_id="", start_ticks=0).runner_alive()

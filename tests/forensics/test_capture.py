"""Stacks of real hung processes, captured within the bound, with and without py-spy."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devops.skypilot.node.forensics.capture import Captured, Target, capture, find_py_spy
from devops.skypilot.node.forensics.summary import summarize
from tests.conftest import PYTHON, REPO, TAG_VAR

HUNG = str(REPO / "tests" / "forensics" / "hung.py")
#: Only keeps a broken capture from hanging the suite; speed is in benchmarks/.
BOUND = 2.0


def wait_hung(pid: int) -> None:
    """Until the process blocks: after "ready" its next sleep is the hang."""
    process = psutil.Process(pid)
    deadline = time.monotonic() + 10
    while process.status() != psutil.STATUS_SLEEPING:
        assert time.monotonic() < deadline, f"pid {pid} never blocked"
        time.sleep(0.005)


class Ranks:
    """Hung ranks as real processes, each registered for the faulthandler dump."""

    def __init__(self, directory: Path, tag: str) -> None:
        self.directory = directory
        self.tag = tag
        self.processes: list[tuple[int, subprocess.Popen[str]]] = []

    def start(self, rank: int, mode: str) -> int:
        env = {
            **os.environ,
            TAG_VAR: self.tag,
            "PYTHONPATH": str(REPO),
            "SKYGUARD_FORENSICS_DIR": str(self.directory),
        }
        process = subprocess.Popen([PYTHON, HUNG, mode], env=env, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        self.processes.append((rank, process))
        assert process.stdout.readline().strip() == "ready"
        wait_hung(process.pid)
        return process.pid

    def targets(self) -> list[Target]:
        return [Target(process.pid, rank) for rank, process in self.processes]

    def stop(self) -> None:
        for _, process in self.processes:
            process.kill()
            process.wait()
            assert process.stdout is not None
            process.stdout.close()


@pytest.fixture
def ranks(tmp_path: Path, leak_tag: str) -> Iterator[Ranks]:
    started = Ranks(tmp_path / "forensics", leak_tag)
    try:
        yield started
    finally:
        started.stop()


def _capture(ranks: Ranks, py_spy: str | None, bound: float = BOUND) -> list[Captured]:
    began = time.monotonic()
    results = capture(ranks.targets(), ranks.directory, began + bound, py_spy)
    # The bound is the contract: the runner's stop never waits past it (plus the
    # time to kill and reap a py-spy that overran).
    assert time.monotonic() - began < bound + 1.0
    return results


def _line_of(text: str) -> int:
    lines = Path(HUNG).read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


@pytest.mark.parametrize("tool", ["py-spy", "faulthandler"])
def test_the_rank_outside_the_collective_is_named_with_its_line(ranks: Ranks, tool: str) -> None:
    py_spy = find_py_spy() if tool == "py-spy" else None
    if tool == "py-spy" and py_spy is None:
        pytest.skip("py-spy is not installed (the forensics extra)")
    ranks.start(0, "collective")
    culprit = ranks.start(1, "sleep")
    ranks.start(2, "collective")
    results = _capture(ranks, py_spy)
    assert {item.source for item in results} == {tool}
    summary = summarize(results)
    sleep_line = _line_of("time.sleep(3600)")
    read_line = _line_of("os.read(read_end, 1)")
    assert summary == (
        f"rank 1 (pid {culprit}) in time.sleep at hung.py:{sleep_line} (_run_epoch); "
        f"ranks 0, 2: in os.read at hung.py:{read_line} (all_reduce)"
    )


@pytest.mark.parametrize("tool", ["py-spy", "faulthandler"])
def test_a_rank_in_a_recv_while_the_others_wait_in_the_collective_is_named(
    ranks: Ranks, tool: str
) -> None:
    """Every rank waits, so none is "outside the collective": those in a
    point-to-point receive never joined the collective the others wait in. Two and
    two, so that the group sizes tell nothing."""
    py_spy = find_py_spy() if tool == "py-spy" else None
    if tool == "py-spy" and py_spy is None:
        pytest.skip("py-spy is not installed (the forensics extra)")
    ranks.start(0, "collective")
    first = ranks.start(1, "recv")
    ranks.start(2, "collective")
    second = ranks.start(3, "recv")
    results = _capture(ranks, py_spy)
    assert {item.source for item in results} == {tool}
    lines = Path(HUNG).read_text().splitlines()
    recv_line = lines.index("def recv() -> None:") + 2
    reduce_line = lines.index("def all_reduce() -> None:") + 2
    assert summarize(results) == (
        f"rank 1 (pid {first}), rank 3 (pid {second}) in os.read at hung.py:{recv_line} (recv); "
        f"ranks 0, 2: in os.read at hung.py:{reduce_line} (all_reduce)"
    )


def test_a_rank_blocked_in_c_is_seen_by_faulthandler(ranks: Ranks) -> None:
    ranks.start(0, "collective")
    culprit = ranks.start(1, "syscall")
    summary = summarize(_capture(ranks, py_spy=None))
    select_line = _line_of("libc.select(")
    assert summary.startswith(
        f"rank 1 (pid {culprit}) in libc.select at hung.py:{select_line} (blocking_select); "
    )


def test_a_py_spy_that_hangs_is_killed_at_the_bound(ranks: Ranks, tmp_path: Path) -> None:
    fake = tmp_path / "py-spy"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    culprit = ranks.start(0, "sleep")
    results = _capture(ranks, str(fake), bound=0.5)
    # faulthandler answered in the meantime; the hung py-spy is gone (leak check).
    assert [(item.source, item.target.pid) for item in results] == [("faulthandler", culprit)]
    assert (ranks.directory / f"py-spy-{culprit}.json").read_text() == ""


def test_a_process_that_never_registered_is_not_signalled(ranks: Ranks, tmp_path: Path) -> None:
    bystander = subprocess.Popen(
        [PYTHON, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
        env={**os.environ, TAG_VAR: ranks.tag},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bystander.stdout is not None and bystander.stdout.readline() == "ready\n"
        results = capture([Target(bystander.pid, 0)], ranks.directory, time.monotonic() + 0.3, None)
        # SIGUSR2's default action would have killed it.
        assert bystander.poll() is None
        assert results[0].stack is None and results[0].error == "py-spy not installed"
        assert summarize(results) == (
            f"no stack for rank 0 (pid {bystander.pid}) (py-spy not installed)"
        )
    finally:
        bystander.kill()
        bystander.wait()
        bystander.stdout.close()  # type: ignore[union-attr]

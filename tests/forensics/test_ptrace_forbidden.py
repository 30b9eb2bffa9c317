"""py-spy forbidden by ptrace, for real: the fallback answers, the record says why, the
bound holds.

The tests run as root, where ptrace is allowed. Two things make it forbidden, as in
a container without ``CAP_SYS_PTRACE``: the runner (and so the py-spy it starts)
runs without that capability (``setpriv``), and the ranks make themselves
non-dumpable (``HUNG_UNDUMPABLE``, see ``hung.py``): only a tracer holding the
capability may read a non-dumpable process, whoever owns it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from devops.skypilot.node.forensics.capture import Target, capture, find_py_spy
from devops.skypilot.node.forensics.summary import summarize
from tests.conftest import PYTHON, REPO, TAG_VAR, SkyguardRunner
from tests.forensics.test_capture import wait_hung

LAUNCH = str(REPO / "tests" / "forensics" / "launch.py")
HUNG = REPO / "tests" / "forensics" / "hung.py"
TIMEOUT = 3
SETPRIV = shutil.which("setpriv")
#: Without CAP_SYS_PTRACE, for this process and all it starts. Not root: it has none.
DROP = [SETPRIV or "setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", "--"]
UNPRIVILEGED = DROP if os.geteuid() == 0 else []
#: Only keeps a broken capture from hanging the suite (2 shared cores); speed is in benchmarks/.
SLACK_MS = 1000

pytestmark = [
    pytest.mark.skipif(os.geteuid() == 0 and SETPRIV is None, reason="no setpriv to drop ptrace"),
    pytest.mark.skipif(find_py_spy() is None, reason="py-spy not installed (forensics extra)"),
]


@dataclass
class Unprivileged(SkyguardRunner):
    """``skyguard run`` without CAP_SYS_PTRACE."""

    def argv(self, args: Sequence[str]) -> list[str]:
        return [*UNPRIVILEGED, *super().argv(args)]


def _line_of(text: str) -> int:
    lines = HUNG.read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def test_the_faulthandler_answers_when_py_spy_is_forbidden(tmp_path: Path, leak_tag: str) -> None:
    runner = Unprivileged(tmp_path, leak_tag)
    result = runner.run(
        [PYTHON, LAUNCH, "collective", "sleep"],
        "--heartbeat-timeout",
        "1",
        "--startup-grace",
        "60",
        "--forensics-timeout",
        str(TIMEOUT),
        env={"HUNG_UNDUMPABLE": "1"},
    )
    assert result.returncode == 75, result.stderr
    forensics = result.record["forensics"]
    sleep_line, read_line = _line_of("time.sleep(3600)"), _line_of("os.read(read_end, 1)")
    assert re.fullmatch(
        rf"rank 1 \(pid \d+\) in time\.sleep at hung\.py:{sleep_line} \(_run_epoch\); "
        rf"rank 0: in os\.read at hung\.py:{read_line} \(all_reduce\)",
        forensics["summary"],
    ), forensics
    # py-spy really was refused on each rank (its own words are kept), and the
    # stacks say the fallback gave them and why.
    stacks = (Path(forensics["directory"]) / "stacks.txt").read_text()
    heads = dict(re.findall(r"^rank (\d) pid (\d+) \(faulthandler; py-spy: .*\):$", stacks, re.M))
    assert sorted(heads) == ["0", "1"], stacks
    for rank, pid in heads.items():
        refused = (Path(forensics["directory"]) / f"py-spy-{pid}.err").read_text()
        assert "Permission denied" in refused, refused
        assert re.search(
            rf"^rank {rank} pid {pid} \(faulthandler; py-spy: .*Permission denied.*\):$",
            stacks,
            re.M,
        )
    assert "faulthandler" in forensics["sources"]
    assert re.search(
        r"^skyguard: py-spy gave no stack for 2 of 3 process\(es\): .*Permission denied",
        result.stderr,
        re.M,
    ), result.stderr
    # The bound: the capture's own clock, and the order of the runner's lines.
    assert forensics["elapsed_ms"] < TIMEOUT * 1000 + SLACK_MS
    lines = result.stderr.splitlines()
    verdict = next(
        i for i, line in enumerate(lines) if "HeartbeatMonitor: heartbeat_timeout" in line
    )
    captured = next(i for i, line in enumerate(lines) if line.startswith("skyguard: stacks ("))
    stop = next(i for i, line in enumerate(lines) if "processes with SIGTERM" in line)
    assert verdict < captured < stop


def test_a_forbidden_py_spy_without_fallback_is_named_in_the_summary(
    tmp_path: Path, leak_tag: str
) -> None:
    """A rank that never registered the dump (it never beat): py-spy was its only way."""
    py_spy = tmp_path / "py-spy"
    py_spy.write_text(f'#!/bin/sh\nexec {" ".join(UNPRIVILEGED)} {find_py_spy()} "$@"\n')
    py_spy.chmod(0o755)
    env = {**os.environ, TAG_VAR: leak_tag, "PYTHONPATH": str(REPO), "HUNG_UNDUMPABLE": "1"}
    env.pop("SKYGUARD_FORENSICS_DIR", None)
    rank = subprocess.Popen([PYTHON, str(HUNG), "silent"], env=env, stdout=subprocess.PIPE)
    try:
        assert rank.stdout is not None and rank.stdout.readline() == b"ready\n"
        wait_hung(rank.pid)
        began = time.monotonic()
        results = capture(
            [Target(rank.pid, 1)], tmp_path / "forensics", began + TIMEOUT, str(py_spy)
        )
        assert time.monotonic() - began < TIMEOUT + SLACK_MS / 1000
    finally:
        rank.kill()
        rank.wait()
        assert rank.stdout is not None
        rank.stdout.close()
    assert results[0].stack is None
    assert re.fullmatch(r"py-spy: .*Permission denied.*", results[0].error), results[0].error
    assert summarize(results) == f"no stack for rank 1 (pid {rank.pid}) ({results[0].error})"

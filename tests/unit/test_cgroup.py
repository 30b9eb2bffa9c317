"""The attempt's cgroup: only a cgroup named by that attempt's token is ever acted on."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devops.skypilot.node.cgroup import PREFIX, AttemptCgroup, _unescape, own_cgroup


@pytest.fixture
def made() -> Iterator[tuple[AttemptCgroup, str]]:
    """A real cgroup of an attempt below this process's own, where one can be made."""
    token = secrets.token_hex(16)
    cgroup = AttemptCgroup.create(token)
    if cgroup is None:
        pytest.skip("no writable cgroup v2 tree here")
    try:
        yield cgroup, token
    finally:
        cgroup.kill()
        _wait("emptied", lambda: not cgroup.populated())
        cgroup.remove()


def test_a_checkpoint_names_only_its_own_attempts_cgroup(
    made: tuple[AttemptCgroup, str],
) -> None:
    cgroup, token = made
    assert AttemptCgroup.named(str(cgroup.path), token) == cgroup
    other = secrets.token_hex(16)
    assert AttemptCgroup.named(str(cgroup.path), other) is None  # another attempt's name
    assert AttemptCgroup.named(str(cgroup.path.parent), token) is None  # the runner's own
    assert AttemptCgroup.named(str(cgroup.path.relative_to("/")), token) is None
    assert AttemptCgroup.named(str(cgroup.path), "") is None


def test_a_directory_outside_the_cgroup_tree_is_never_one(tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    lookalike = tmp_path / f"{PREFIX}{token}"
    lookalike.mkdir()
    (lookalike / "cgroup.procs").write_text("1\n")
    assert AttemptCgroup.named(str(lookalike), token) is None


#: Moves itself into the cgroup (argv[1]), forks a child that leaves the session, and
#: each says so with a file named ``argv[2]`` + its pid.
BORN_INSIDE = """
import os, sys, time
open(sys.argv[1], "w").write("0")
if os.fork() == 0:
    os.setsid()
open(sys.argv[2] + str(os.getpid()), "w").close()
time.sleep(60)
"""


def _wait(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30  # a guard against hanging, not a timing
    while not condition():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.02)


def test_a_process_born_inside_is_listed_killed_and_the_cgroup_removed(
    made: tuple[AttemptCgroup, str], tmp_path: Path
) -> None:
    cgroup, _ = made
    procs, marks = str(cgroup.path / "cgroup.procs"), str(tmp_path / "in-")
    process = subprocess.Popen([sys.executable, "-c", BORN_INSIDE, procs, marks])
    try:
        _wait("both inside", lambda: len(list(tmp_path.glob("in-*"))) == 2)
        inside = sorted(int(path.name.removeprefix("in-")) for path in tmp_path.glob("in-*"))
        assert sorted(cgroup.pids()) == inside and cgroup.populated()
        assert not cgroup.remove()  # a process is in it
        cgroup.kill()
        process.wait(timeout=30)
        _wait("emptied", lambda: not cgroup.populated())
        assert cgroup.pids() == []
        assert cgroup.remove() and not cgroup.path.exists()
    finally:
        process.kill()
        process.wait()


def test_mountinfo_escapes_are_read() -> None:
    assert _unescape(r"/sys/fs/cgroup/a\040b\134c") == "/sys/fs/cgroup/a b\\c"


def test_own_cgroup_is_a_directory_of_the_cgroup_tree_or_none() -> None:
    here = own_cgroup()
    assert here is None or (here / "cgroup.procs").exists()

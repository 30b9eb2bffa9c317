"""The training side: the dump handler is registered once, published last, and never
takes SIGUSR2 from a program that uses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PROGRAM = """
import os, signal, sys
from devops.skypilot import stackdump
if sys.argv[1] == "own-handler":
    signal.signal(signal.SIGUSR2, lambda *_: print("own handler ran", flush=True))
print(stackdump.register(), stackdump.register(), flush=True)
os.kill(os.getpid(), signal.SIGUSR2)
print("alive", flush=True)
"""


def _run(mode: str, directory: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SKYGUARD_FORENSICS_DIR": str(directory)}
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_handler_dumps_into_the_published_file(tmp_path: Path) -> None:
    done = _run("plain", tmp_path)
    assert done.stdout.splitlines() == ["True True", "alive"], done.stderr
    (dump,) = tmp_path.glob("faulthandler-*.txt")
    assert 'File "<string>", line 7 in <module>' in dump.read_text()
    assert not list(tmp_path.glob(".faulthandler-*"))  # no temp file left


def test_a_program_that_uses_sigusr2_keeps_it(tmp_path: Path) -> None:
    done = _run("own-handler", tmp_path)
    assert done.stdout.splitlines() == ["False False", "own handler ran", "alive"], done.stderr
    assert not list(tmp_path.iterdir())  # nothing published: the runner never signals it

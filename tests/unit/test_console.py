"""skyguard's own lines never raise into it, and a closed stdout never changes its exit code."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

from devops.skypilot.common.console import say
from tests.conftest import REPO


def test_say_on_a_closed_pipe_returns_false() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = open(write_end, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        assert say("skyguard: termination {}", stream) is False
    finally:
        with contextlib.suppress(BrokenPipeError):  # the line is still buffered
            stream.close()


def test_say_on_a_closed_stream_object_returns_false() -> None:
    stream = io.StringIO()
    stream.close()
    assert say("line", stream) is False


def without_unbuffered() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}


def _exit_code_with_closed_stdout(release: bool) -> int:
    code = (
        "import sys\n"
        "from devops.skypilot.common.console import release_closed_streams\n"
        "sys.stdout.write('buffered, never flushed\\n')\n"
        + ("release_closed_streams()\n" if release else "")
        + "sys.exit(3)\n"
    )
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (``head -1``) is gone before we write
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            stdout=write_end,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            # Block-buffered, as a real run's stdout to a pipe is.
            env={**without_unbuffered(), "PYTHONPATH": str(REPO)},
            timeout=30,
        )
    finally:
        os.close(write_end)
    return done.returncode


def test_a_closed_stdout_keeps_the_exit_code() -> None:
    assert _exit_code_with_closed_stdout(release=False) == 120  # what Python does alone
    assert _exit_code_with_closed_stdout(release=True) == 3

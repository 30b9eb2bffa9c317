"""Does a SkyPilot task script wait to flush the bucket after the runner? Real shells.

SkyPilot runs ``run:`` as ``/bin/bash -i <file>`` with its MOUNT_CACHED flush
appended to the file; the runner looks for that shell among its ancestors
(:mod:`devops.skypilot.node.flush`). Each case starts a real shell the way a
recipe would, with a Python child in the runner's place that reports what it finds.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from devops.skypilot.node.flush import FLUSH_MARKER, unflushed_state_warning

REPO = Path(__file__).resolve().parents[2]
PROBE = shlex.join(
    [
        sys.executable,
        "-c",
        "from pathlib import Path\n"
        "from devops.skypilot.node.flush import flushing_script_above, unflushed_state_warning\n"
        "print(flushing_script_above())\n"
        "print(unflushed_state_warning(Path('/skyguard-state/k/node-0'), 'fuse.rclone'))\n",
    ]
)
#: The ends of the tail SkyPilot 0.14.1 appends to run: (get_rclone_flush_script).
FLUSH = f"\n{FLUSH_MARKER.decode()}\nexit $__skypilot_user_exit_code\n"


def run_task_script(
    tmp_path: Path, body: str, flush: bool = True, inner: str = ""
) -> tuple[Path, str, str]:
    """Run ``body`` as SkyPilot runs a task script; the probe's two answers."""
    script = tmp_path / "sky_app_test"
    script.write_text(body + (FLUSH if flush else "\n"))
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(REPO), "INNER": inner}
    result = subprocess.run(
        ["/bin/bash", "-i", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    found, warning = result.stdout.strip().splitlines()[-2:]
    return script, found, warning


def test_runner_as_the_last_command_of_a_task_script_is_flushed(tmp_path: Path) -> None:
    script, found, warning = run_task_script(tmp_path, PROBE)
    assert found == str(script)
    assert warning == "None"


def test_a_subshell_or_pipeline_in_between_still_counts(tmp_path: Path) -> None:
    script, found, _ = run_task_script(tmp_path, f"( {PROBE} ) | cat")
    assert found == str(script)


def test_exec_replaces_the_shell_that_would_flush(tmp_path: Path) -> None:
    _, found, warning = run_task_script(tmp_path, f"exec {PROBE}")
    assert found == "None"
    assert "is on a cached bucket mount (fuse.rclone)" in warning
    assert "no exec, no set -e" in warning


def test_a_script_without_the_flush_is_not_a_task_script(tmp_path: Path) -> None:
    _, found, warning = run_task_script(tmp_path, PROBE, flush=False)
    assert found == "None"
    assert warning.startswith("skyguard: state dir /skyguard-state/k/node-0 is on a cached")


def test_the_flush_in_a_c_string_is_not_a_shell_waiting_for_the_runner(tmp_path: Path) -> None:
    # SkyPilot's Slurm executor starts as `bash -c '... --script=<run: + flush>'`:
    # that shell holds the flush's text but runs no task script after the runner.
    _, found, warning = run_task_script(tmp_path, 'bash -c "$INNER"', False, PROBE + FLUSH)
    assert found == "None"
    assert warning != "None"


def test_only_a_cached_rclone_mount_is_warned_about(tmp_path: Path) -> None:
    # pytest has no task script above it: only the filesystem type decides.
    for fstype in ("ext4", "nfs4", "fuse", "fuse.gcsfuse", "9p", ""):
        assert unflushed_state_warning(tmp_path, fstype) is None
    assert unflushed_state_warning(tmp_path, "fuse.rclone") is not None


def test_an_ancestor_reading_its_script_from_a_pipe_never_blocks_the_runner(
    tmp_path: Path,
) -> None:
    """`bash /dev/fd/3` or `bash FIFO` above the runner: the argument is a pipe, and
    opening it to look for the flush would wait for a writer forever."""
    fifo = tmp_path / "script.fifo"
    os.mkfifo(fifo)
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    shell = subprocess.Popen(
        ["/bin/bash", str(fifo)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with fifo.open("w") as writer:
            writer.write(PROBE + FLUSH)
        stdout, stderr = shell.communicate(timeout=60)
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.communicate()
    assert shell.returncode == 0, stderr
    found, warning = stdout.strip().splitlines()[-2:]
    assert found == "None"
    assert warning != "None"

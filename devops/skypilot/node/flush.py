"""Whether the state the runner writes on a cached bucket mount reaches the bucket.

SkyPilot's ``MOUNT_CACHED`` mounts a bucket with rclone (filesystem type
``fuse.rclone``) behind a local write-back cache: a file is uploaded seconds
after it is closed. The upload of the runner's last record is waited for only
by the flush SkyPilot appends to the task's ``run:`` script
(``TaskCodeGen.get_rclone_flush_script`` in SkyPilot 0.14.1); a recovery tears
the machine down right after that script ends, so state not flushed by then is
lost and the next attempt starts again at attempt 1.

SkyPilot runs every task script as ``/bin/bash -i <file>``
(``log_lib.run_bash_command_with_log``, on the Ray and the Slurm path alike), and
that file ends with the flush. So the signal used here is: is one of the runner's
ancestors a shell running a script file that holds the flush? It is not when
``run:`` ended with ``exec skyguard run`` (the shell became the runner), when the
runner was started by hand (ssh, a ``setup:`` step, a terminal on the node), or
when the process tree above it is hidden (a container's own PID namespace).
What it cannot see: a ``run:`` that ``set -e`` makes abort before its end.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psutil

#: The filesystem type of SkyPilot's MOUNT_CACHED mounts.
CACHED_MOUNT_FSTYPE = "fuse.rclone"
#: The flush's first line: it saves the exit status of the script's last command.
FLUSH_MARKER = b"__skypilot_user_exit_code=$?"
_SHELLS = frozenset({"bash", "sh"})
#: Task scripts are small; a huge file is not one of SkyPilot's.
_MAX_SCRIPT_BYTES = 16 * 1024 * 1024


def flushing_script_above(process: psutil.Process | None = None) -> Path | None:
    """The SkyPilot task script a shell above ``process`` runs (and flushes after), or None."""
    try:
        ancestors = (process or psutil.Process()).parents()
    except psutil.Error:
        return None
    for ancestor in ancestors:
        script = _script_file(ancestor)
        if script is not None and _holds_flush(script):
            return script
    return None


def unflushed_state_warning(state_dir: Path, fstype: str) -> str | None:
    """One line when ``state_dir`` is on a cached mount nothing will flush after the runner."""
    if fstype != CACHED_MOUNT_FSTYPE or flushing_script_above() is not None:
        return None
    return (
        f"skyguard: state dir {state_dir} is on a cached bucket mount ({fstype}) but no "
        "SkyPilot run: script waits to flush it after the runner exits (exec'd, or started "
        "outside run:): a recovery can lose this attempt's record; end run: with "
        "`skyguard run ...`, no exec, no set -e (recipes/job.yaml)"
    )


def _script_file(process: psutil.Process) -> Path | None:
    """The script file of a ``bash [options] FILE`` process; None for ``-c`` or a non-shell."""
    try:
        argv = process.cmdline()
    except psutil.Error:
        return None
    if not argv or os.path.basename(argv[0]).lstrip("-") not in _SHELLS:
        return None
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            script = next(args, None)
        elif arg in ("-o", "+o", "-O", "+O"):  # an option with a value
            next(args, None)
            continue
        elif arg.startswith("--"):
            if arg in ("--rcfile", "--init-file"):
                next(args, None)
            continue
        elif arg.startswith(("-", "+")):
            # -c (alone or combined, as in -ec) and -s: the script is not a file.
            if set("cs") & set(arg[1:]):
                return None
            continue
        else:
            script = arg
        if script is None:
            return None
        path = Path(script)
        if not path.is_absolute():
            try:
                path = Path(process.cwd()) / path
            except psutil.Error:
                return None
        return path
    return None


def _holds_flush(script: Path) -> bool:
    # Only a regular file: an ancestor's argument may name a pipe (`bash /dev/fd/3`),
    # and reading one would block the runner's start for good.
    # O_NONBLOCK: opening a FIFO for reading would wait for a writer.
    try:
        fd = os.open(script, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return FLUSH_MARKER in os.read(fd, _MAX_SCRIPT_BYTES)
    except OSError:
        return False
    finally:
        os.close(fd)

"""Children that take the state dir away from the runner: removed, replaced by a
file, or on a disk that is full.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import sys
import time
from pathlib import Path

from devops.skypilot.heartbeat import Heartbeat
from devops.skypilot.node.monitors.heartbeat import HeartbeatMonitor
from tests.faults.moments import beats_until_go
from tests.faults.output import numbered_lines


def remove_state_dir(code: str) -> int:
    shutil.rmtree(os.environ["SKYGUARD_STATE_DIR"])
    return int(code)


def remove_state_dir_while_beating() -> int:
    """The heartbeat file's directory vanishes (a bucket unmounted) while the loop goes on."""
    beat = beats_until_go()
    shutil.rmtree(os.environ["SKYGUARD_STATE_DIR"])
    while True:
        beat.beat()
        time.sleep(0.05)


def replace_state_dir_with_file(code: str) -> int:
    """The state dir's path stops being a directory: nothing can be written under it."""
    state = os.environ["SKYGUARD_STATE_DIR"]
    shutil.rmtree(state)
    Path(state).write_text("not a directory\n")
    return int(code)


def fill_log_disk(lines: str, count: str) -> int:
    """Print more than the state dir's disk holds, then beat ``count`` times into the
    full disk. The runner's heartbeat monitor must count every beat; it is asked here,
    on a made-up clock 1.5 timeouts apart, so a slow machine cannot fail the scenario
    and a missed beat always does."""
    sys.stdout.buffer.write(numbered_lines(int(lines)))
    sys.stdout.buffer.flush()
    state = os.environ["SKYGUARD_STATE_DIR"]
    bound = time.monotonic() + 60  # a guard against a log that never fills the disk
    while os.statvfs(state).f_bavail:
        if time.monotonic() > bound:
            print("fill-log-disk: the attempt log never filled the disk", file=sys.stderr)
            return 3
        time.sleep(0.01)
    beat = Heartbeat(min_interval=0)
    assert beat.path is not None
    monitor = HeartbeatMonitor(beat.path, timeout=1.0)
    monitor.start(0.0)
    for step in range(1, int(count) + 1):
        time.sleep(0.02)  # the file system's clock moves on, so each touch is a new mtime
        if not beat.beat() or beat.path.stat().st_size:  # a touch: the write found no space
            print(f"fill-log-disk: beat {step} was no touch of an empty file", file=sys.stderr)
            return 3
        verdict = monitor.check(1.5 * step)
        if verdict is not None:
            print(f"fill-log-disk: beat {step} not seen: {verdict.detail}", file=sys.stderr)
            return 3
    print("fill-log-disk: done", flush=True)
    return 0


def beat_into_full_disk(count: str) -> int:
    """Every heartbeat write fails as on a full disk: no file may grow past 0 bytes."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    beat = Heartbeat(min_interval=0)
    assert beat.path is not None
    # A beat may still land as a touch (no space needed); the write itself must fail.
    failed = sum(1 for _ in range(int(count)) if not beat.beat() or beat.path.stat().st_size == 0)
    print(f"beat-into-full-disk: {failed} failed writes", flush=True)
    return 0

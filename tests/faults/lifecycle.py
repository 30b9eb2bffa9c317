"""Children that run and end in the ways a training command does: crash, die of a
signal, hang (in Python or in the kernel), exit on cue, stop beating, checkpoint on SIGUSR1.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from devops.skypilot.heartbeat import Heartbeat
from tests.faults.moments import beats, beats_until_go, hang, ready, ready_on_sigterm, wait_for_go


def crash() -> int:
    beats()
    raise RuntimeError("simulated crash")


def kill_self(name: str) -> int:
    beats()
    os.kill(os.getpid(), getattr(signal, name))
    time.sleep(5)
    return 0


def hang_after_beats(ignore_term: str = "") -> int:
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    beats()
    ready()
    hang()
    return 0


def hang_on_fifo(path: str) -> int:
    """Blocked in the kernel: open() of a FIFO waits for a writer that never comes. A
    thread beats until the test has seen the main thread asleep there (``$FAULT_GO``);
    from then on nothing beats, so the hang cannot be decided before it is in place."""
    os.mkfifo(path)
    threading.Thread(target=beats_until_go, daemon=True).start()
    ready()
    with open(path, "rb") as fifo:
        fifo.read()
    return 0


def wait_then_exit(code: str) -> int:
    ready()
    wait_for_go()
    return int(code)


def delete_heartbeat() -> int:
    beat = beats_until_go()
    assert beat.path is not None
    beat.path.unlink()
    ready()
    hang()
    return 0


def beat_forever() -> int:
    beat = Heartbeat(min_interval=0)
    beat.beat()
    ready()
    while True:
        beat.beat()
        time.sleep(0.05)


def hang_ready_on_sigterm() -> int:
    """Beat a little, then hang; the runner's SIGTERM is noted, never obeyed."""
    ready_on_sigterm()
    beats()
    hang()
    return 0


def checkpoint_on_usr1() -> int:
    """Beat until SIGUSR1 says "checkpoint now", then save and exit 0 (Slurm's
    ``--signal=USR1@N`` setups)."""
    asked: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))
    beat = Heartbeat(min_interval=0)
    ready()
    while not asked:
        beat.beat()
        time.sleep(0.05)
    print("checkpoint-on-usr1: got SIGUSR1, checkpoint saved", flush=True)
    return 0

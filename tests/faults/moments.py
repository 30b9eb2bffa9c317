"""What every child of the fault matrix shares: telling the test it reached its
moment (``$FAULT_READY``), waiting for the test's word (``$FAULT_GO``), beating, hanging.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from devops.skypilot.heartbeat import Heartbeat


def ready() -> None:
    path = os.environ.get("FAULT_READY")
    if path:
        Path(path + ".tmp").write_text(str(os.getpid()))
        os.replace(path + ".tmp", path)


def wait_for_go() -> None:
    go = os.environ["FAULT_GO"]
    while not os.path.exists(go):
        time.sleep(0.02)


def beats(count: int = 3) -> Heartbeat:
    beat = Heartbeat(min_interval=0)
    for _ in range(count):
        beat.beat()
        time.sleep(0.05)
    return beat


def beats_until_go() -> Heartbeat:
    """Beat until the test says the runner has counted one (``$FAULT_GO``)."""
    beat = Heartbeat(min_interval=0)
    go = os.environ["FAULT_GO"]
    while not os.path.exists(go):
        beat.beat()
        time.sleep(0.02)
    return beat


def hang() -> None:
    while True:
        time.sleep(3600)


def beat_for(seconds: str, then: str = "exit") -> int:
    """Beat for ``seconds``; then exit 0, or hang (``then=hang``)."""
    beat = Heartbeat(min_interval=0)
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        beat.beat()
        time.sleep(0.05)
    print(f"beat-for: beat for {seconds}s", flush=True)
    if then == "hang":
        hang()
    return 0


def ready_on_sigterm() -> None:
    """SIGTERM only says that it arrived (``$FAULT_READY``, and one byte per SIGTERM in
    ``$FAULT_READY.sigterms``); stopping takes until SIGKILL."""
    count = os.open(os.environ["FAULT_READY"] + ".sigterms", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def noted(signum: int, frame: object) -> None:
        os.write(count, b"T")
        if os.fstat(count).st_size == 1:
            ready()

    signal.signal(signal.SIGTERM, noted)

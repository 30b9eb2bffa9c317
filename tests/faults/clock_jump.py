"""Run the runner under a wall clock that jumps: ``python clock_jump.py RUNNER ARGS...``.

``CLOCK_JUMP`` seconds (negative: backwards) are added to ``time.time()`` and
``time.time_ns()`` from ``CLOCK_JUMP_AFTER`` seconds after start on, in this
process only. Deadlines on the monotonic clock do not move; deadlines on the
wall clock would fire at once (forwards) or a day late (backwards). At exit it
reports how often the jumped clock was read, to prove the jump was in effect.
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys
import time

_real_time = time.time
_real_time_ns = time.time_ns
_started = time.monotonic()
_offset = float(os.environ["CLOCK_JUMP"])
_after = float(os.environ.get("CLOCK_JUMP_AFTER", "0.3"))
_reads_after_jump = 0


def _jumped() -> bool:
    global _reads_after_jump
    if time.monotonic() - _started < _after:
        return False
    _reads_after_jump += 1
    return True


def jumped_time() -> float:
    return _real_time() + (_offset if _jumped() else 0.0)


def jumped_time_ns() -> int:
    return _real_time_ns() + (int(_offset * 1e9) if _jumped() else 0)


def report() -> None:
    print(f"clock-jump: {_reads_after_jump} wall-clock reads after the jump", file=sys.stderr)


time.time = jumped_time
time.time_ns = jumped_time_ns
atexit.register(report)

if __name__ == "__main__":
    sys.argv = ["skyguard", "run", *sys.argv[1:]]
    runpy.run_module("devops.skypilot", run_name="__main__", alter_sys=True)

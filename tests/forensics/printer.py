"""A job that only prints progress, never beats: ``printer.py SECONDS [--hang]``.

Prints ``step N loss X`` every 50 ms for SECONDS, then exits 0, or with ``--hang``
goes silent in ``time.sleep`` (no skyguard import anywhere: no code change)."""

from __future__ import annotations

import sys
import time


def main() -> None:
    until = time.monotonic() + float(sys.argv[1])
    step = 0
    while time.monotonic() < until:
        step += 1
        print(f"step {step} loss {1 / step:.4f}", flush=True)
        time.sleep(0.05)
    if "--hang" in sys.argv:
        time.sleep(3600)


if __name__ == "__main__":
    main()

"""Small misbehaving programs the runner is tested against (run as real processes)."""

from __future__ import annotations

import os
import signal
import sys
import time


def double_fork(pid_file: str) -> int:
    """Leave a daemon behind (setsid + second fork), as a careless data loader might."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with open(pid_file + ".tmp", "w") as handle:
                handle.write(str(os.getpid()))
            os.replace(pid_file + ".tmp", pid_file)
            time.sleep(3600)
        os._exit(0)
    while not os.path.exists(pid_file):
        time.sleep(0.01)
    return 0


def main() -> int:
    mode, *args = sys.argv[1:]
    if mode == "exit":
        return int(args[0])
    if mode == "signal":
        os.kill(os.getpid(), getattr(signal, args[0]))
        time.sleep(5)
        return 0
    if mode == "double-fork":
        return double_fork(args[0])
    if mode == "sleep":
        print("child: sleeping", flush=True)
        time.sleep(float(args[0]))
        return 0
    if mode == "print-then-sleep":
        print(args[0], flush=True)
        time.sleep(3600)
        return 0
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main())

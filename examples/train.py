"""A tiny stand-in for a training script: no GPU, no torch, just a loop that beats.

Flags make it fail the ways real jobs do, so the runner can be watched at work::

    skyguard run --heartbeat-timeout 5 -- python examples/train.py --hang-after 3
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from devops.skypilot import heartbeat


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20, help="steps to train")
    parser.add_argument("--step-time", type=float, default=0.2, help="seconds per step")
    parser.add_argument("--hang-after", type=int, help="stop beating (hang) after N steps")
    parser.add_argument("--crash-after", type=int, help="raise an error after N steps")
    parser.add_argument("--oom-after", type=int, help="die with a CUDA OOM message after N steps")
    parser.add_argument("--ignore-sigterm", action="store_true", help="ignore SIGTERM")
    parser.add_argument(
        "--only-attempts",
        default="",
        help="comma-separated attempts (SKYGUARD_ATTEMPT) in which the faults apply",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    attempt = os.environ.get("SKYGUARD_ATTEMPT", "1")
    faulty = not args.only_attempts or attempt in args.only_attempts.split(",")
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"train: attempt {attempt}, {args.steps} steps", flush=True)
    loss = 2.0
    for step in range(1, args.steps + 1):
        time.sleep(args.step_time)
        loss *= 0.9
        heartbeat.beat()
        print(f"train: step {step} loss {loss:.4f}", flush=True)
        if faulty and step == args.hang_after:
            print("train: hanging (no more heartbeats)", flush=True)
            while True:
                time.sleep(3600)
        if faulty and step == args.crash_after:
            raise RuntimeError(f"simulated crash at step {step}")
        if faulty and step == args.oom_after:
            print("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr)
            return 1
    print("train: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

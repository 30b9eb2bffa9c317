"""One rank of the benchmark's training job: a gloo all-reduce loop that fails on request.

Run by every launcher in the comparison (bare, torchrun, ft_launcher, skyguard
around torchrun); rank and rendezvous come from the environment they set
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).

Timestamps go to the file named by ``BENCH_MARKS``, one ``O_APPEND`` write per
line (``<event> <rank> <pid> <time.monotonic()>``): CLOCK_MONOTONIC is one clock
for every process on the machine, so the harness can line them up with its own.

Heartbeats, each the way its tool wants them:

* skyguard: only rank 0 beats (``devops.skypilot.heartbeat``). Every step ends
  in an all-reduce, so a rank that hangs anywhere stalls rank 0 at its next
  collective at the latest; rank 0's beat is the job's beat. (Beating from every
  rank into one file would be weaker, not stronger: any live rank would keep the
  file fresh.)
* ft_launcher: every rank connects its ``RankMonitorClient`` to its rank monitor
  and sends a heartbeat per step; that is the code change NVRx needs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable

FAULTS = (
    "none",
    "crash",
    "hang-collective",
    "hang-outside",
    "ignore-sigterm",
    "double-fork",
)


def mark(event: str, rank: int) -> None:
    path = os.environ.get("BENCH_MARKS")
    if not path:
        return
    line = f"{event} {rank} {os.getpid()} {time.monotonic():.6f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def leave_helper(rank: int) -> None:
    """Double-fork a daemon into its own session, as a careless logger or loader does."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            mark("helper", rank)
            time.sleep(3600)
        os._exit(0)
    os.wait()


def hang_forever() -> None:
    while True:
        time.sleep(3600)


class Beats:
    """The tool's heartbeat, or nothing; every beat sent is marked ("beat")."""

    def __init__(self, kind: str, rank: int) -> None:
        self.rank = rank
        self._send: Callable[[bool], bool] = lambda force: False
        self._close: Callable[[], None] = lambda: None
        if kind == "skyguard" and rank == 0:
            from devops.skypilot import heartbeat

            self._send = heartbeat.beat  # rate-limited: True when it wrote
        elif kind == "nvrx":
            from nvidia_resiliency_ext.fault_tolerance import RankMonitorClient

            client = RankMonitorClient()
            client.init_workload_monitoring()

            def send(force: bool) -> bool:
                client.send_heartbeat()
                return True

            self._send = send
            self._close = client.shutdown_workload_monitoring

    def beat(self, force: bool = False) -> None:
        if self._send(force):
            mark("beat", self.rank)

    def close(self) -> None:
        self._close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--step-time", type=float, default=0.1)
    parser.add_argument("--fault", choices=FAULTS, default="none")
    parser.add_argument("--fault-rank", type=int, default=1)
    parser.add_argument("--fault-step", type=int, default=10)
    parser.add_argument("--beat", choices=("none", "skyguard", "nvrx"), default="none")
    args = parser.parse_args()

    rank = int(os.environ["RANK"])
    faulty = rank == args.fault_rank
    mark("start", rank)
    if faulty and args.fault == "ignore-sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if faulty and args.fault == "double-fork":
        leave_helper(rank)

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    beats = Beats(args.beat, rank)
    tensor = torch.ones(1024)
    mark("ready", rank)
    for step in range(1, args.steps + 1):
        if faulty and step == args.fault_step:
            mark("fault", rank)
            if args.fault == "crash":
                raise RuntimeError(f"rank {rank}: simulated crash at step {step}")
            if args.fault == "hang-collective":
                # A receive nobody sends: this rank waits inside gloo, rank 0 in its all-reduce.
                dist.recv(torch.zeros(1), src=0 if rank else 1)
            if args.fault in ("hang-outside", "ignore-sigterm"):
                hang_forever()
        time.sleep(args.step_time)
        dist.all_reduce(tensor)
        beats.beat()
    dist.destroy_process_group()
    # The loop is over; tear-down until exit is the launcher's, not a hang.
    beats.beat(force=True)
    mark("done", rank)
    beats.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A custom monitor: stop the job when the checkpoint disk is nearly full.

    python examples/custom_monitor.py --heartbeat-timeout 30 -- python examples/train.py

The runner stops the tree and records ``job_failed`` with the monitor's detail;
the exit code is the stopped command's (143 after SIGTERM): final, not retried.
"""

from __future__ import annotations

import os
import shutil
import sys

from devops.skypilot.cli import build_parser
from devops.skypilot.common.termination import TerminationReason, Verdict
from devops.skypilot.node.config import build_config
from devops.skypilot.node.monitors.base import Monitor
from devops.skypilot.node.runner import Runner, RunnerExtensions


class DiskSpaceMonitor(Monitor):
    interval = 5.0  # seconds between checks; the runner schedules them

    def __init__(self, path: str = ".", min_free_gb: float = 1.0) -> None:
        self.path = path
        self.min_free_gb = min_free_gb

    def check(self, now: float) -> Verdict | None:
        free_gb = shutil.disk_usage(self.path).free / 2**30
        if free_gb >= self.min_free_gb:
            return None
        detail = f"only {free_gb:.2f} GB free on {self.path}"
        return Verdict(TerminationReason.JOB_FAILED, detail)


def main(argv: list[str]) -> int:
    args = build_parser(["run"]).parse_args(["run", *argv])
    monitor = DiskSpaceMonitor(min_free_gb=float(os.environ.get("MIN_FREE_GB", "1")))
    config = build_config(args, os.environ)
    return Runner(config, RunnerExtensions(monitors=[monitor])).run().exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

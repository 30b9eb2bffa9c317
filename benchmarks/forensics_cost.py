"""What the stack capture costs a hung job: `python benchmarks/forensics_cost.py [--runs N]`.

A real hang (tests/forensics/launch.py: rank 0 waits in a fake all_reduce, rank 1
sleeps) under `skyguard run --heartbeat-timeout 1`, repeated. The cost is the
`forensics.elapsed_ms` of each record: the time from the verdict to the end of the
capture, which is exactly how much later SIGTERM goes out than without forensics.
Writes ``benchmarks/results/forensics_cost.json`` and prints the median and spread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from skyguard_run import runner_argv

from devops.skypilot.node.forensics.capture import find_py_spy
from devops.skypilot.node.state import write_json_atomic

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "forensics_cost.json"
LAUNCH = REPO / "tests" / "forensics" / "launch.py"


def one_run(state_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = runner_argv(state_dir, "--heartbeat-timeout", "1", "--startup-grace", "60")
    command += [sys.executable, str(LAUNCH), "collective", "sleep"]
    subprocess.run(command, env=env, capture_output=True, timeout=120, check=False)
    record = json.loads((state_dir / "termination.json").read_text())
    forensics: dict[str, Any] = record["forensics"]
    return forensics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.runs):
            runs.append(one_run(Path(scratch) / f"run-{index}"))
    costs = [float(run["elapsed_ms"]) for run in runs]
    result: dict[str, Any] = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "py_spy": find_py_spy() is not None,
        "runs": args.runs,
        "verdict_to_sigterm_ms": {
            "median": round(statistics.median(costs), 1),
            "min": min(costs),
            "max": max(costs),
        },
        "sources": sorted({source for run in runs for source in run["sources"]}),
        "summaries": sorted({str(run["summary"]).split(" (pid")[0] for run in runs}),
    }
    write_json_atomic(RESULTS, result)
    cost = result["verdict_to_sigterm_ms"]
    print(
        f"| forensics (3 processes, {', '.join(result['sources'])}) | "
        f"{cost['median']} ms | {cost['min']}-{cost['max']} ms |"
    )


if __name__ == "__main__":
    main()

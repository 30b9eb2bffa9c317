"""How fast the runner notices, decides and cleans up: `python benchmarks/runner_latency.py`.

Every figure is measured from outside the runner. The children print
``time.monotonic()`` (CLOCK_MONOTONIC is one clock for every process on Linux) at
the moments that matter, and the harness notes when the runner process exits.
Repeats each scenario and reports median and spread; writes
``benchmarks/results/runner_latency.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import psutil
from skyguard_run import runner_argv

from devops.skypilot.node.state import write_json_atomic

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "runner_latency.json"

# Children: each prints "T <name> <monotonic>" lines the harness parses.
EXIT_AT_ONCE = "import time; print('T exit', time.monotonic(), flush=True)"
HANG_AFTER_BEATS = """
import os, signal, sys, time
from devops.skypilot.heartbeat import Heartbeat
ignore = sys.argv[1] == "ignore"
def on_term(signum, frame):
    print("T sigterm", time.monotonic(), flush=True)
    if not ignore:
        os._exit(0)
signal.signal(signal.SIGTERM, on_term)
beat = Heartbeat(min_interval=0)
for _ in range(3):
    beat.beat()
    print("T beat", time.monotonic(), flush=True)
    time.sleep(0.1)
while True:
    time.sleep(3600)
"""


def run_runner(argv: list[str]) -> tuple[dict[str, float], float, str]:
    """Run to completion; the children's timestamps and the runner's exit time."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    stdout, stderr = process.communicate()
    ended = time.monotonic()
    marks: dict[str, float] = {}
    for line in stdout.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "T":
            marks[parts[1]] = float(parts[2])
    return marks, ended, stderr.decode()


def child_exit_to_runner_exit(tmp: Path) -> float:
    marks, ended, _ = run_runner([*runner_argv(tmp), sys.executable, "-c", EXIT_AT_ONCE])
    return ended - marks["exit"]


def hang_overshoot(tmp: Path, timeout: float) -> float:
    argv = runner_argv(tmp, "--heartbeat-timeout", str(timeout), "--grace", "5")
    marks, _, _ = run_runner([*argv, sys.executable, "-c", HANG_AFTER_BEATS, "cooperate"])
    return marks["sigterm"] - (marks["beat"] + timeout)


def stop_cooperative(tmp: Path) -> float:
    argv = runner_argv(tmp, "--heartbeat-timeout", "1", "--grace", "5")
    marks, ended, _ = run_runner([*argv, sys.executable, "-c", HANG_AFTER_BEATS, "cooperate"])
    return ended - marks["sigterm"]


def stop_ignoring(tmp: Path, grace: float = 1.0) -> float:
    argv = runner_argv(tmp, "--heartbeat-timeout", "1", "--grace", str(grace))
    marks, ended, _ = run_runner([*argv, sys.executable, "-c", HANG_AFTER_BEATS, "ignore"])
    return ended - marks["sigterm"] - grace


def startup_to_exec(tmp: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    began = time.time_ns()
    out = subprocess.run(
        [*runner_argv(tmp), "date", "+%s%N"], env=env, capture_output=True, check=True
    ).stdout
    return (int(out.split()[0]) - began) / 1e9


def idle_cost(tmp: Path, window: float = 10.0) -> tuple[float, float]:
    """CPU share of one core and RSS (MB) of a runner watching a quiet child."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = runner_argv(tmp, "--heartbeat-timeout", "1h", "--max-runtime", "1h")
    process = subprocess.Popen([*argv, "sleep", str(window + 5)], env=env)
    try:
        runner = psutil.Process(process.pid)
        time.sleep(2)  # past start-up
        before = runner.cpu_times()
        time.sleep(window)
        after = runner.cpu_times()
        rss = runner.memory_info().rss / 2**20
    finally:
        process.terminate()
        process.wait()
    cpu = (after.user + after.system - before.user - before.system) / window
    return cpu * 100, rss


def measure(name: str, repeats: int, probe: Callable[[Path], float]) -> dict[str, float | str]:
    values = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            values.append(probe(Path(tmp)))
    return {
        "name": name,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = [
        measure("command exit -> runner exit (s)", args.repeats, child_exit_to_runner_exit),
        measure(
            "hang overshoot past deadline, timeout 2s (s)",
            args.repeats,
            lambda tmp: hang_overshoot(tmp, 2.0),
        ),
        measure(
            "hang overshoot past deadline, timeout 20s (s)",
            max(1, args.repeats // 3),
            lambda tmp: hang_overshoot(tmp, 20.0),
        ),
        measure("SIGTERM -> runner exit, cooperative child (s)", args.repeats, stop_cooperative),
        measure(
            "SIGTERM+grace -> runner exit, SIGTERM-ignoring child (s)", args.repeats, stop_ignoring
        ),
        measure("runner start -> command exec (s)", args.repeats, startup_to_exec),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cpu, rss = idle_cost(Path(tmp))
    rows.append(
        {"name": "runner idle CPU (% of one core)", "median": cpu, "min": cpu, "max": cpu, "n": 1}
    )
    rows.append({"name": "runner RSS (MB)", "median": rss, "min": rss, "max": rss, "n": 1})
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "rows": rows,
    }
    write_json_atomic(RESULTS, result)
    print(f"Runner latency ({result['date']}, {result['machine']})\n")
    print("| measure | median | min | max | n |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['name']} | {row['median']:.3f} | {row['min']:.3f} | {row['max']:.3f} "
            f"| {row['n']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

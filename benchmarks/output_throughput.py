"""How fast a chatty command's output gets through the runner (`benchmarks/output_throughput.py`).

The same writer runs three ways, interleaved within one run of this script:
``writer | cat > /dev/null`` (the reference), ``skyguard run -- writer > /dev/null``
with the built-in monitors (log patterns included), and the same without log
patterns (the copy alone). The writer writes ``--megabytes`` MiB with ``os.write``
as fast as its pipe takes them, in 100-byte lines, 1 KiB lines or with no newline
at all, and notes ``time.monotonic()`` before its first and after its last write:
its throughput is what back-pressure left it. For each run the harness also
samples the runner's peak RSS and checks that ``logs/attempt-1.log`` holds every
byte, in order. Reports median and spread of MB/s, of the ratio to ``cat`` in the
same repeat, and of the CPU the copier (``cat``, or the runner without the writer)
spent per GiB while the writer wrote; writes ``benchmarks/results/output_throughput.json``.

``--baseline DIR`` adds a fourth way, interleaved with the others: the runner of
another checkout (``git worktree add DIR COMMIT``) with the built-in monitors, so
a change is measured against what it replaces under the same load.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
from skyguard_run import runner_argv

from devops.skypilot.node.state import write_json_atomic

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "output_throughput.json"
BLOCK = 1 << 20
#: The output shapes: name -> bytes of one line (0: no newline at all).
SHAPES = {"100-byte lines": 100, "1 KiB lines": 1024, "no newlines": 0}
#: How the writer's output is consumed: name -> runner options (None: through cat).
WAYS: dict[str, tuple[str, ...] | None] = {
    "cat": None,
    "skyguard": (),
    "skyguard, no log patterns": ("--config", "{tmp}/no-patterns.toml"),
}
NO_PATTERNS = "[log_patterns]\ndefaults = false\n"
#: The way ``--baseline`` adds: another checkout's runner, built-in monitors.
BASELINE = "baseline"

WRITER = r"""
import os, sys, time
line, total, timing = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, os.path.join(os.environ["BENCH_REPO"], "benchmarks"))
from output_throughput import block
data = block(line)
view = memoryview(data)
start = time.monotonic()
written = 0
while written < total:
    written += os.write(1, view[: min(len(view), total - written)])
end = time.monotonic()
with open(timing, "w") as out:
    out.write(f"{start} {end}")
"""


def block(line: int) -> bytes:
    """One MiB of output: numbered lines of ``line`` bytes, or no newline (``line`` 0)."""
    if not line:
        return bytes(ord("a") + i % 26 for i in range(BLOCK))
    count = BLOCK // line
    body = b"".join(b"step %08d loss %s" % (i, b"." * (line - 20)) + b"\n" for i in range(count))
    return body + b"#" * (BLOCK - len(body))


@dataclass
class Run:
    way: str
    shape: str
    mb_per_s: float
    peak_rss_mb: float = 0.0
    #: CPU seconds per GiB the copier (cat, or the runner: all its threads, not the
    #: writer) spent while the writer wrote: the work the copy costs, which the
    #: load of a shared machine moves far less than it moves the speed.
    cpu_s_per_gib: float = 0.0
    log_complete: bool | None = None


class _Sampler(threading.Thread):
    """Samples a process's CPU time and resident memory every 10 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__()
        self._pid = pid
        self.stop = threading.Event()
        self.peak_rss_mb = 0.0
        #: (monotonic time, user + system CPU seconds)
        self.cpu: list[tuple[float, float]] = []

    def run(self) -> None:
        try:
            process = psutil.Process(self._pid)
            while not self.stop.wait(0.01):
                with process.oneshot():
                    times, rss = process.cpu_times(), process.memory_info().rss
                self.cpu.append((time.monotonic(), times.user + times.system))
                self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
        except psutil.Error:
            pass

    def cpu_between(self, start: float, end: float) -> float:
        """CPU seconds spent from ``start`` to ``end`` (the samples nearest each)."""
        if not self.cpu:
            return 0.0
        at = [min(self.cpu, key=lambda sample: abs(sample[0] - when))[1] for when in (start, end)]
        return at[1] - at[0]


def run_once(way: str, shape: str, megabytes: int, tmp: Path, baseline: Path | None) -> Run:
    total = megabytes * BLOCK
    timing = tmp / "timing"
    runner_repo = baseline if way == BASELINE and baseline is not None else REPO
    env = {**os.environ, "PYTHONPATH": str(runner_repo), "BENCH_REPO": str(REPO)}
    writer = [sys.executable, "-c", WRITER, str(SHAPES[shape]), str(total), str(timing)]
    options = WAYS[way] if way != BASELINE else ()
    state = tmp / "state"
    with open(os.devnull, "wb") as devnull:
        if options is None:  # writer | cat > /dev/null
            source = subprocess.Popen(writer, stdout=subprocess.PIPE, env=env)
            copier = subprocess.Popen(["cat"], stdin=source.stdout, stdout=devnull)
            assert source.stdout is not None
            source.stdout.close()
            sampler = _Sampler(copier.pid)
            sampler.start()
            if source.wait() != 0 or copier.wait() != 0:
                raise RuntimeError(f"writer | cat failed: {source.returncode}, {copier.returncode}")
        else:
            filled = (option.replace("{tmp}", str(tmp)) for option in options)
            argv = [*runner_argv(state, *filled), *writer]
            copier = subprocess.Popen(
                argv, stdout=devnull, stderr=subprocess.PIPE, env=env, cwd=runner_repo
            )
            sampler = _Sampler(copier.pid)
            sampler.start()
            _, stderr = copier.communicate()
            if copier.returncode != 0:
                raise RuntimeError(f"runner exited {copier.returncode}: {stderr.decode()[-2000:]}")
        sampler.stop.set()
        sampler.join()
    start, end = (float(value) for value in timing.read_text().split())
    cpu = sampler.cpu_between(start, end) / (total / 2**30)
    result = Run(way, shape, total / (end - start) / 1e6, sampler.peak_rss_mb, cpu)
    if options is not None:
        result.log_complete = _log_complete(state / "logs" / "attempt-1.log", shape, total)
        shutil.rmtree(state)  # the next run is attempt 1 again
    return result


def _log_complete(log: Path, shape: str, total: int) -> bool:
    expected = block(SHAPES[shape])
    if log.stat().st_size != total:
        return False
    with log.open("rb") as handle:
        return all(handle.read(BLOCK) == expected for _ in range(total // BLOCK))


def summarise(runs: list[Run], ways: list[str]) -> list[dict[str, Any]]:
    rows = []
    for shape in SHAPES:
        cat = [run.mb_per_s for run in runs if run.way == "cat" and run.shape == shape]
        for way in ways:
            mine = [run for run in runs if run.way == way and run.shape == shape]
            speeds = [run.mb_per_s for run in mine]
            ratios = [run.mb_per_s / base for run, base in zip(mine, cat, strict=True)]
            rows.append(
                {
                    "shape": shape,
                    "way": way,
                    "mb_per_s": {
                        "median": statistics.median(speeds),
                        "min": min(speeds),
                        "max": max(speeds),
                    },
                    "ratio_to_cat": {
                        "median": statistics.median(ratios),
                        "min": min(ratios),
                        "max": max(ratios),
                    },
                    "peak_rss_mb": max(run.peak_rss_mb for run in mine),
                    "cpu_s_per_gib": {
                        "median": statistics.median(run.cpu_s_per_gib for run in mine),
                        "min": min(run.cpu_s_per_gib for run in mine),
                        "max": max(run.cpu_s_per_gib for run in mine),
                    },
                    "log_complete": None if way == "cat" else all(run.log_complete for run in mine),
                    "n": len(mine),
                }
            )
    return rows


def _commit(checkout: Path) -> str | None:
    """The commit a ``--baseline`` checkout is at (never its path: results are shared)."""
    found = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() if found.returncode == 0 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=512, help="MiB per run")
    parser.add_argument("--baseline", type=Path, help="another checkout's root, run as a 4th way")
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "devops" / "skypilot").is_dir():
        parser.error(f"--baseline {args.baseline}: not a checkout of this repository")
    ways = [*WAYS, *([BASELINE] if args.baseline is not None else [])]
    runs: list[Run] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "no-patterns.toml").write_text(NO_PATTERNS)
        for _ in range(args.repeats):
            for shape in SHAPES:
                for way in ways:
                    runs.append(run_once(way, shape, args.megabytes, tmp, args.baseline))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "megabytes_per_run": args.megabytes,
        "repeats": args.repeats,
        "baseline_commit": _commit(args.baseline) if args.baseline is not None else None,
        "rows": summarise(runs, ways),
    }
    write_json_atomic(RESULTS, result)
    print(
        f"Output throughput ({result['date']}, {result['machine']}, {args.megabytes} MiB, "
        f"load average {result['load_average']})\n"
    )
    print(
        "| output | way | MB/s median (min-max) | / cat median (min-max) "
        "| CPU s/GiB median (min-max) | peak RSS MB | log |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        speed, ratio, cpu = row["mb_per_s"], row["ratio_to_cat"], row["cpu_s_per_gib"]
        log = {None: "", True: "complete", False: "**incomplete**"}[row["log_complete"]]
        rss = f"{row['peak_rss_mb']:.0f}" if row["way"] != "cat" else ""
        print(
            f"| {row['shape']} | {row['way']} "
            f"| {speed['median']:.0f} ({speed['min']:.0f}-{speed['max']:.0f}) "
            f"| {ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f}) "
            f"| {cpu['median']:.2f} ({cpu['min']:.2f}-{cpu['max']:.2f}) | {rss} | {log} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

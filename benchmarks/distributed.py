"""Multi-node costs on one machine: `python benchmarks/distributed.py`.

(a) **One decision stops every node.** Four real runners on loopback, each
    with the fake SkyPilot variables of its rank (as SkyPilot sets them on four
    nodes). Node 2's command either exits 3 or stops beating under a 2 s
    heartbeat timeout; nodes 0, 1 and 3 run ``sleep``, which records nothing.
    The harness finds the four commands (the runners' children), waits until
    the workers follow the head, releases node 2, then polls the commands with
    psutil until every one is gone (exited; a zombie waiting for its runner to
    reap it counts as gone: it holds no memory and no GPU). The decision
    instant is node 2's command exiting (crash) or receiving SIGTERM from its
    runner (hang), both as ``time.monotonic()`` written by the command itself
    (one clock for every process on Linux). Target: < 2 s. Also reported:
    when the last of the four runners has exited.
(b) **NCCL preflight cost**: wall time of ``skyguard nccl-check --nproc 2``
    (two gloo ranks on CPU, the default 1 MiB..256 MiB sweep), process and
    torch start included, with what the ranks report about their own time.
(c) **What monitoring costs**: the same 10 s workload (a beat and a log line
    every 50 ms) under a runner with every monitor on (heartbeat, max
    runtime, log patterns with one extra pattern, GPU monitor asked for, and a
    2-node coordination: head and worker measured separately) and under two
    independent runners with none (so both cases load the machine alike).
    Wall time, start-up and exit around the workload, the runner's own CPU
    (its children excluded; the total read when it has exited but is not yet
    reaped, the steady share from samples every 0.25 s, 10 ms tick resolution)
    and its peak RSS (VmHWM). The GPU monitor is off where NVML finds no GPU;
    a note under the table says which.
(d) **The head's endpoint under a 1,024-node job**: 1,024 simulated workers
    long-polling a real head runner on loopback, with and without a crowd of
    512 slow senders (see ``benchmarks/coordination_load.py``): how long the
    decision takes to reach every worker, and the head's threads, memory and
    descriptors.

Every process a trial starts carries a tag in its environment and is killed
when the trial ends, whatever happened. Writes
``benchmarks/results/distributed.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import psutil
from coordination_load import FOLLOWERS, SLOW_SENDERS, load_trial, summary
from skyguard_run import runner_argv

from devops.skypilot.node.state import write_json_atomic

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "distributed.json"

TAG_VAR = "SKYGUARD_BENCHMARK_PROCESS_TAG"
#: Variables of the caller's shell that would change what the runner does.
FOREIGN_PREFIXES = ("SKYGUARD_", "SKYPILOT_", "WANDB_", "GITHUB_")
NUM_NODES = 4
FAILING_NODE = 2
HEARTBEAT_TIMEOUT = 2.0
#: Time given to the workers, once every command runs, to reach the head and long-poll it.
SETTLE = 2.0
WORKLOAD_SECONDS = 10.0
#: Bounds that only catch a stuck trial (it is then killed and the benchmark fails).
START_TIMEOUT = 90.0
TRIAL_TIMEOUT = 120.0
POLL = 0.002
#: How often a watched process's CPU time and memory are read.
SAMPLE_INTERVAL = 0.25

# Node 2's command: waits for the harness's go file, then fails one of two ways.
# argv: mode (crash|hang), go file, marks file.
FAILING = """
import os, signal, sys, time
from devops.skypilot.heartbeat import Heartbeat
mode, go, marks = sys.argv[1:4]
def mark(name, value):
    with open(marks, "a") as handle:
        handle.write(f"{name} {value}\\n")
def on_term(signum, frame):
    mark("sigterm", time.monotonic())
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
beat, last = Heartbeat(), None
while not os.path.exists(go):
    if beat.beat():
        last = time.monotonic()
    time.sleep(0.02)
if mode == "crash":
    mark("exit", time.monotonic())
    os._exit(3)
mark("last_beat", last)
while True:
    time.sleep(3600)
"""
# The (c) workload: beats and logs for a fixed time, whatever watches it.
WORKLOAD = """
import sys, time
from devops.skypilot import heartbeat
print("T start", time.monotonic(), flush=True)
end = time.monotonic() + float(sys.argv[1])
step = 0
while time.monotonic() < end:
    heartbeat.beat()
    print(f"step {step} loss {1.0 / (step + 1):.5f} lr 3e-4 tokens/s 12345", flush=True)
    step += 1
    time.sleep(0.05)
print("T end", time.monotonic(), flush=True)
"""
ALL_MONITORS_CONFIG = """
[log_patterns]
defaults = true
[[log_patterns.match]]
pattern = "RuntimeError: DataLoader worker .* is killed"
reason = "job_failed"
"""
NO_MONITORS_CONFIG = """
[log_patterns]
defaults = false
"""


# --- processes -----------------------------------------------------------------------------


def base_env(tag: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)}
    env.update({TAG_VAR: tag, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    return env


def node_env(tag: str, rank: int, num_nodes: int) -> dict[str, str]:
    """What SkyPilot sets on node ``rank`` of ``num_nodes``, all on loopback."""
    return {
        **base_env(tag),
        "SKYPILOT_NODE_RANK": str(rank),
        "SKYPILOT_NUM_NODES": str(num_nodes),
        "SKYPILOT_NODE_IPS": "\n".join(["127.0.0.1"] * num_nodes),
        "SKYPILOT_TASK_ID": f"sky-managed-bench-{tag[:8]}_0",
        "SKYGUARD_COORD_SECRET": "benchmark-coordination-secret",
    }


def kill_tagged(tag: str) -> None:
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(TAG_VAR) == tag:
                process.kill()


@contextlib.contextmanager
def tagged() -> Iterator[str]:
    """A fresh tag; every process started with it is gone when the block ends."""
    tag = uuid.uuid4().hex
    try:
        yield tag
    finally:
        kill_tagged(tag)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Watched:
    """A process started now: its exit time, own CPU time (sampled, and at exit) and peak RSS."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.log = argv, log
        self.ended: float | None = None
        self.returncode: int | None = None
        #: user + system seconds of the process itself (threads included, children not).
        self.cpu_seconds: float | None = None
        #: (monotonic, cpu seconds so far), every SAMPLE_INTERVAL while it runs.
        self.cpu_samples: list[tuple[float, float]] = []
        self.peak_rss_mb = 0.0
        self._done = threading.Event()
        with log.open("wb") as out:
            self.started = time.monotonic()
            self.popen = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )
        threading.Thread(target=self._wait, daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()

    def _wait(self) -> None:
        # WNOWAIT: the exited process stays a zombie, so its CPU times can still be read.
        os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOWAIT)
        self.ended = time.monotonic()
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(self.popen.pid).cpu_times()
            self.cpu_seconds = times.user + times.system
        self.returncode = self.popen.wait()
        self._done.set()

    def _sample(self) -> None:
        status = Path(f"/proc/{self.popen.pid}/status")
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(self.popen.pid)
            while not self._done.wait(SAMPLE_INTERVAL):
                times = process.cpu_times()
                self.cpu_samples.append((time.monotonic(), times.user + times.system))
                with contextlib.suppress(OSError):
                    for line in status.read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            kib = int(line.split()[1])
                            self.peak_rss_mb = max(self.peak_rss_mb, kib / 1024)

    def cpu_rate(self, start: float, end: float) -> float:
        """Share of one core the process used between two moments (from the samples)."""
        inside = [sample for sample in self.cpu_samples if start <= sample[0] <= end]
        if len(inside) < 2:
            raise RuntimeError(f"too few CPU samples between {start:.1f} and {end:.1f}")
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return (c1 - c0) / (t1 - t0)

    def wait(self, timeout: float) -> int:
        if not self._done.wait(timeout):
            raise RuntimeError(f"{self.argv[:6]} still running after {timeout:g}s")
        assert self.returncode is not None
        return self.returncode

    def children(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [
                child
                for child in psutil.Process(self.popen.pid).children()
                if child.status() != psutil.STATUS_ZOMBIE
            ]
        return []

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def read_marks(path: Path) -> dict[str, float]:
    marks = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            name, value = line.split()
            if value != "None":
                marks[name] = float(value)
    return marks


def record(state: Path, rank: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state / f"node-{rank}" / "termination.json").read_text())
    return data


# --- (a) one decision stops every node -----------------------------------------------------


class Failure(str, Enum):
    """How node 2 fails: its own reason and exit code, as the runner must record them."""

    CRASH = "crash"
    HANG = "hang"

    @property
    def expected(self) -> tuple[str, int]:
        return {Failure.CRASH: ("job_failed", 3), Failure.HANG: ("heartbeat_timeout", 75)}[self]


@dataclass(frozen=True)
class StopTrial:
    decision: float
    #: rank -> when its command was seen gone.
    gone_at: dict[int, float]
    #: rank -> when its runner exited.
    runner_exit: dict[int, float]
    #: hang only: last beat + timeout, the earliest the hang could be called.
    deadline: float | None


def stop_trial(tmp: Path, mode: Failure) -> StopTrial:
    state, go, marks = tmp / "state", tmp / "go", tmp / "marks"
    port = free_port()
    with tagged() as tag:
        runners: dict[int, Watched] = {}
        try:
            for rank in range(NUM_NODES):
                options = ["--coord-port", str(port)]
                command: list[str] = ["sleep", "600"]
                if rank == FAILING_NODE:
                    command = [sys.executable, "-c", FAILING, mode.value, str(go), str(marks)]
                    if mode is Failure.HANG:
                        options += ["--heartbeat-timeout", f"{HEARTBEAT_TIMEOUT:g}"]
                        options += ["--startup-grace", "60"]
                # Each node its own state dir, as recipes/job.yaml gives them.
                argv = [*runner_argv(state / f"node-{rank}", "--grace", "5", *options), *command]
                env = node_env(tag, rank, NUM_NODES)
                runners[rank] = Watched(argv, env, tmp / f"runner-{rank}.log")
            commands = find_commands(runners)
            time.sleep(SETTLE)
            go.touch()
            gone_at: dict[int, float] = {}
            limit = time.monotonic() + TRIAL_TIMEOUT
            while len(gone_at) < NUM_NODES:
                now = time.monotonic()
                if now > limit:
                    raise RuntimeError(f"{mode.value}: commands still alive: {commands}")
                for rank, process in commands.items():
                    if rank not in gone_at and gone(process):
                        gone_at[rank] = now
                time.sleep(POLL)
            codes = {rank: runner.wait(TRIAL_TIMEOUT) for rank, runner in runners.items()}
            check_stop(mode, state, codes, runners)
        finally:
            for runner in runners.values():
                with contextlib.suppress(OSError):
                    runner.popen.kill()
    found = read_marks(marks)
    decision = found["exit" if mode is Failure.CRASH else "sigterm"]
    deadline = found["last_beat"] + HEARTBEAT_TIMEOUT if "last_beat" in found else None
    exits = {rank: runner.ended for rank, runner in runners.items() if runner.ended is not None}
    return StopTrial(decision, gone_at, exits, deadline)


def find_commands(runners: Mapping[int, Watched]) -> dict[int, psutil.Process]:
    """Each runner's command, once all of them run."""
    found: dict[int, psutil.Process] = {}
    limit = time.monotonic() + START_TIMEOUT
    while len(found) < len(runners):
        if time.monotonic() > limit:
            missing = sorted(set(runners) - set(found))
            logs = "\n".join(runners[rank].output()[-1500:] for rank in missing)
            raise RuntimeError(f"no command started on node(s) {missing}:\n{logs}")
        for rank, runner in runners.items():
            if runner.ended is not None:
                raise RuntimeError(f"runner {rank} exited early:\n{runner.output()[-3000:]}")
            children = runner.children()
            if rank not in found and children:
                found[rank] = children[0]
        time.sleep(0.05)
    return found


def check_stop(
    mode: Failure, state: Path, codes: Mapping[int, int], runners: Mapping[int, Watched]
) -> None:
    """The trial counts only if every node ended the documented way."""
    own = mode.expected
    expected = {rank: own[1] for rank in codes}
    problems = []
    if dict(codes) != expected:
        problems.append(f"exit codes {dict(codes)}, expected {expected}")
    for rank in codes:
        try:
            reason = record(state, rank)["reason"]
        except (OSError, ValueError, KeyError) as error:
            reason = f"no record ({error})"
        want = own[0] if rank == FAILING_NODE else "peer_failed"
        if reason != want:
            problems.append(f"node {rank}: reason {reason}, expected {want}")
    if problems:
        logs = "\n".join(f"--- node {r}\n{w.output()[-1500:]}" for r, w in runners.items())
        raise RuntimeError(f"{mode.value}: {'; '.join(problems)}\n{logs}")


# --- (b) NCCL preflight --------------------------------------------------------------------


def nccl_trial(tmp: Path) -> dict[str, float]:
    result_path = tmp / "nccl.json"
    argv = [
        sys.executable,
        "-m",
        "devops.skypilot",  # what the `skyguard` console script runs
        "nccl-check",
        "--nproc",
        "2",
        "--json",
        str(result_path),
        "--quiet",
    ]
    with tagged() as tag:
        runner = Watched(argv, base_env(tag), tmp / "nccl.log")
        try:
            code = runner.wait(TRIAL_TIMEOUT)
        finally:
            with contextlib.suppress(OSError):
                runner.popen.kill()
    if code != 0:
        raise RuntimeError(f"nccl-check exited {code}:\n{runner.output()[-3000:]}")
    data = json.loads(result_path.read_text())
    checks = {check["name"]: check["seconds"] for check in data["checks"]}
    assert runner.ended is not None
    return {
        "wall": runner.ended - runner.started,
        "ranks": data["seconds"],
        "rendezvous": checks["rendezvous"],
        "bandwidth": checks["bandwidth"],
        "busbw": data["peak_busbw_gbps"],
    }


# --- (c) what monitoring costs -------------------------------------------------------------


@dataclass(frozen=True)
class CostSample:
    wall: float
    #: Runner start -> the workload's first line (runner and workload start-up).
    startup: float
    #: The workload's last line -> runner exit.
    teardown: float
    cpu_seconds: float
    #: Share of one core while the workload runs (start-up and exit left out), in %.
    steady_cpu_percent: float
    peak_rss_mb: float


def cost_trial(tmp: Path, monitored: bool) -> tuple[dict[str, CostSample], bool]:
    """Two runners side by side, each over its own copy of the workload; by role.

    Monitored: the two nodes of one job (head and worker). Not monitored: two
    independent runners, so both cases put the same load on the machine.
    Also whether the GPU monitor ran.
    """
    config = tmp / "skyguard.toml"
    config.write_text(ALL_MONITORS_CONFIG if monitored else NO_MONITORS_CONFIG)
    command = [sys.executable, "-c", WORKLOAD, f"{WORKLOAD_SECONDS:g}"]
    options = ["--config", str(config)]
    if monitored:
        options += ["--heartbeat-timeout", "30s", "--max-runtime", "1h"]
        options += ["--gpu-idle-timeout", "15m", "--coord-port", str(free_port())]
    with tagged() as tag:
        runners: dict[str, Watched] = {}
        try:
            for rank in range(2):
                if monitored:
                    role = ("head", "worker")[rank]
                    env = node_env(tag, rank, 2)
                else:
                    role = f"alone-{rank}"
                    env = base_env(tag)
                env["SKYGUARD_NOTIFY_ENABLED"] = "false"
                argv = [*runner_argv(tmp / f"state-{rank}", "--grace", "5", *options), *command]
                runners[role] = Watched(argv, env, tmp / f"{role}.log")
            codes = {role: runner.wait(TRIAL_TIMEOUT) for role, runner in runners.items()}
        finally:
            for runner in runners.values():
                with contextlib.suppress(OSError):
                    runner.popen.kill()
    if any(codes.values()):
        logs = "\n".join(w.output()[-1500:] for w in runners.values())
        raise RuntimeError(f"workload runs failed: {codes}\n{logs}")
    samples = {}
    gpu_on = False
    for role, runner in runners.items():
        text = runner.output()
        gpu_on = gpu_on or "GPU monitor:" in text
        marks = {
            parts[1]: float(parts[2])
            for parts in (line.split() for line in text.splitlines())
            if len(parts) == 3 and parts[0] == "T"
        }
        assert runner.ended is not None and runner.cpu_seconds is not None
        samples[role] = CostSample(
            wall=runner.ended - runner.started,
            startup=marks["start"] - runner.started,
            teardown=runner.ended - marks["end"],
            cpu_seconds=runner.cpu_seconds,
            steady_cpu_percent=100 * runner.cpu_rate(marks["start"] + 1.0, marks["end"] - 0.5),
            peak_rss_mb=runner.peak_rss_mb,
        )
    return samples, gpu_on


# --- the report ----------------------------------------------------------------------------


def row(name: str, values: Sequence[float], unit: str, target: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "unit": unit,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "target": target,
        "raw": list(values),
    }


def repeat(times: int, trial: Callable[[Path], Any]) -> list[Any]:
    results = []
    for _ in range(times):
        with tempfile.TemporaryDirectory(prefix="skyguard-bench-") as tmp:
            results.append(trial(Path(tmp)))
    return results


def stop_rows(repeats: int) -> list[dict[str, Any]]:
    crashes: list[StopTrial] = []
    hangs: list[StopTrial] = []
    for index in range(repeats):
        # Interleaved, so background load hits both alike.
        crashes += repeat(1, lambda tmp: stop_trial(tmp, Failure.CRASH))
        hangs += repeat(1, lambda tmp: stop_trial(tmp, Failure.HANG))
        print(f"(a) repeat {index + 1}/{repeats} done", file=sys.stderr)
    target = "< 2 s"
    rows = [
        row(
            "(a) node 2's command exits 3 -> all 4 commands gone",
            [max(t.gone_at.values()) - t.decision for t in crashes],
            "s",
            target,
        ),
        row(
            "(a) node 2 hang: its runner's SIGTERM -> all 4 commands gone",
            [max(t.gone_at.values()) - t.decision for t in hangs],
            "s",
            target,
        ),
    ]
    deadlines = [t for t in hangs if t.deadline is not None]
    if deadlines:
        rows.append(
            row(
                f"(a) node 2 hang: heartbeat deadline (last beat + {HEARTBEAT_TIMEOUT:g} s) "
                "-> all 4 commands gone",
                [max(t.gone_at.values()) - t.deadline for t in deadlines if t.deadline],
                "s",
            )
        )
    rows.append(
        row(
            "(a) decision -> all 4 runners exited (crash and hang)",
            [max(t.runner_exit.values()) - t.decision for t in crashes + hangs],
            "s",
        )
    )
    return rows


def nccl_rows(repeats: int) -> list[dict[str, Any]]:
    trials = repeat(repeats, nccl_trial)
    print("(b) done", file=sys.stderr)
    return [
        row("(b) `skyguard nccl-check --nproc 2`: wall", [t["wall"] for t in trials], "s"),
        row("(b) ... inside the ranks (torch import included)", [t["ranks"] for t in trials], "s"),
        row("(b) ... rendezvous", [t["rendezvous"] for t in trials], "s"),
        row("(b) ... bandwidth sweep 1-256 MiB", [t["bandwidth"] for t in trials], "s"),
        row("(b) ... peak bus bandwidth (gloo, loopback)", [t["busbw"] for t in trials], "GB/s"),
    ]


def cost_rows(repeats: int) -> tuple[list[dict[str, Any]], bool]:
    samples: dict[str, list[CostSample]] = {}
    gpu_on = False
    for index in range(repeats):
        for monitored in (False, True):
            with tempfile.TemporaryDirectory(prefix="skyguard-bench-") as tmp:
                by_role, gpu = cost_trial(Path(tmp), monitored)
            gpu_on = gpu_on or gpu
            for role, sample in by_role.items():
                samples.setdefault(role, []).append(sample)
        print(f"(c) repeat {index + 1}/{repeats} done", file=sys.stderr)
    groups = (
        ("no monitors (2 runners side by side)", ("alone-0", "alone-1")),
        ("all monitors, 2-node head", ("head",)),
        ("all monitors, 2-node worker", ("worker",)),
    )
    rows = []
    measures: tuple[tuple[str, str, Callable[[CostSample], float]], ...] = (
        (f"wall time of a {WORKLOAD_SECONDS:g} s workload", "s", lambda s: s.wall),
        ("runner start -> workload's first line", "s", lambda s: s.startup),
        ("workload's last line -> runner exit", "s", lambda s: s.teardown),
        ("runner CPU, whole run, its children excluded", "s", lambda s: s.cpu_seconds),
        ("runner CPU while the workload runs", "% of a core", lambda s: s.steady_cpu_percent),
        ("runner peak RSS", "MB", lambda s: s.peak_rss_mb),
    )
    for title, unit, value in measures:
        for label, roles in groups:
            values = [value(sample) for role in roles for sample in samples[role]]
            rows.append(row(f"(c) {title}: {label}", values, unit))
    return rows, gpu_on


def load_rows(repeats: int) -> list[dict[str, Any]]:
    by_crowd: dict[int, list[dict[str, float]]] = {0: [], SLOW_SENDERS: []}
    for index in range(repeats):
        for crowd in by_crowd:  # interleaved, so background load hits both alike
            with tagged() as tag, tempfile.TemporaryDirectory(prefix="skyguard-bench-") as tmp:
                by_crowd[crowd].append(
                    summary(load_trial(Path(tmp), base_env(tag), free_port(), crowd))
                )
        print(f"(d) repeat {index + 1}/{repeats} done", file=sys.stderr)
    rows = []
    for crowd, trials in by_crowd.items():
        label = f"{FOLLOWERS} long polls" + (f" + {crowd} slow senders" if crowd else "")
        rows += [
            row(f"(d) {label}: decision -> median worker", [t["median"] for t in trials], "s"),
            row(f"(d) {label}: decision -> every worker", [t["slowest"] for t in trials], "s"),
            row(f"(d) {label}: head runner threads, idle", [t["idle_threads"] for t in trials], ""),
            row(f"(d) {label}: head runner threads, most", [t["threads"] for t in trials], ""),
            row(f"(d) {label}: head runner RSS, idle", [t["idle_rss"] for t in trials], "MB"),
            row(f"(d) {label}: head runner RSS, most", [t["rss"] for t in trials], "MB"),
            row(f"(d) {label}: head runner open descriptors, most", [t["fds"] for t in trials], ""),
        ]
        if crowd:
            rows.append(
                row(f"(d) {label}: slow senders dropped", [t["dropped"] for t in trials], "")
            )
    ratio = [
        crowded["slowest"] / calm["slowest"]
        for calm, crowded in zip(by_crowd[0], by_crowd[SLOW_SENDERS], strict=True)
    ]
    rows.append(row("(d) decision -> every worker: with the crowd / without", ratio, "x"))
    return rows


def merged_with_earlier(result: dict[str, Any], parts: set[str]) -> dict[str, Any]:
    """This run's parts replace theirs in the results file; the other parts' figures stay.

    ``runs`` says when each part was measured, on what, under which load.
    """
    try:
        earlier = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        earlier = {}
    keys = ("date", "machine", "load_average_1m", "repeats")
    # A file from before ``runs`` existed was one run of every part it holds.
    runs = earlier.get("runs") or {part: {k: earlier.get(k) for k in keys} for part in "abc"}
    runs.update({part: {k: result[k] for k in keys} for part in parts})

    def elsewhere(text: str) -> bool:
        return text[1:2] not in parts

    rows = [row for row in earlier.get("rows", []) if elsewhere(row["name"])]
    notes = [note for note in earlier.get("notes", []) if elsewhere(note)]
    return {
        **result,
        "rows": rows + result["rows"],
        "notes": notes + result["notes"],
        "runs": dict(sorted(runs.items())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="for (a); (b) and (c) run half")
    parser.add_argument(
        "--only", choices=("a", "b", "c", "d"), action="append", help="run only these parts"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    parts = set(args.only or ("a", "b", "c", "d"))
    fewer = max(1, args.repeats // 2)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if "a" in parts:
        rows += stop_rows(args.repeats)
    if "b" in parts:
        try:
            import torch  # noqa: F401 - only whether it is there
        except ImportError:
            notes.append("(b) left out: torch is not installed")
        else:
            rows += nccl_rows(fewer)
    if "c" in parts:
        cost, gpu_on = cost_rows(fewer)
        rows += cost
        notes.append(
            "(c) GPU monitor: "
            + ("on (NVML found GPUs)" if gpu_on else "asked for, off (NVML finds no GPU here)")
        )
    if "d" in parts:
        rows += load_rows(fewer)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "load_average_1m": os.getloadavg()[0],
        "repeats": args.repeats,
        "notes": notes,
        "rows": rows,
    }
    write_json_atomic(RESULTS, merged_with_earlier(result, parts))
    print(
        f"Distributed jobs ({result['date']}, {result['machine']}, "
        f"load {result['load_average_1m']:.1f})\n"
    )
    print("| measure | unit | median | min | max | n | target |\n|---|---|---|---|---|---|---|")
    for item in rows:
        print(
            f"| {item['name']} | {item['unit']} | {item['median']:.3f} | {item['min']:.3f} "
            f"| {item['max']:.3f} | {item['n']} | {item['target']} |"
        )
    for note in notes:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    # SIGTERM (a CI timeout) runs the finally blocks: no runner is left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())

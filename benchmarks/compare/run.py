"""skyguard next to torchrun, NVIDIA ft_launcher and the bare command, side by side.

Run: `python benchmarks/compare/run.py` (`--help` for fewer repeats, tools or workloads).

The same 2-rank gloo all-reduce job (``worker.py``) runs under each launcher and
fails in six ways. Everything is measured from outside: the ranks write
``time.monotonic()`` marks to a file (CLOCK_MONOTONIC is one clock for every
process), the harness polls the ranks' pids every 20 ms and samples the
supervisor processes' CPU and RSS with psutil. Every process carries a tag in
its environment; whatever carries it after a run is an orphan, reported, then
killed. See README.md beside this file for the protocol and the latest table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from devops.skypilot.node.ports import free_listen_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORKER = str(HERE / "worker.py")
BARE = str(HERE / "bare.sh")
FT_VENV = HERE / ".venv"
RESULTS = HERE / "results" / "compare.json"
TAG_VAR = "SKYGUARD_BENCH_TAG"
#: How often the ranks' pids are checked: the resolution of every latency below.
POLL = 0.02
#: How often the supervisor processes' CPU and RSS are sampled.
SAMPLE = 0.25
#: Exit code SkyPilot's job_recovery restarts on (recipes/job.yaml).
RETRY_CODE = 75


@dataclass(frozen=True)
class Settings:
    timeout: float
    grace: int
    startup: float
    steps: int
    step_time: float
    fault_step: int
    #: How long past the deadline a tool may take before the harness calls it "not detected".
    detect_cap: float
    #: After the tool exits: how long its leftovers get to die before they count as orphans.
    settle: float
    ft_check_interval: float


@dataclass(frozen=True)
class Workload:
    name: str
    fault: str
    #: finish: ends by itself; crash: a rank dies; hang: the job stops making progress;
    #: orphan: ends by itself but leaves a daemon behind.
    kind: str
    title: str


WORKLOADS: tuple[Workload, ...] = (
    Workload("finish", "none", "finish", "(1) finishes"),
    Workload("crash", "crash", "crash", "(2) rank 1 crashes"),
    Workload("hang-collective", "hang-collective", "hang", "(3) rank 1 hangs in a collective"),
    Workload("hang-outside", "hang-outside", "hang", "(4) rank 1 hangs outside collectives"),
    Workload("ignore-sigterm", "ignore-sigterm", "hang", "(5) rank 1 hangs, ignores SIGTERM"),
    Workload("double-fork", "double-fork", "orphan", "(6) rank 1 leaves a double-forked helper"),
)


@dataclass(frozen=True)
class Tool:
    name: str
    #: How the worker beats under this tool (worker.py --beat).
    beat: str
    argv: Callable[[Settings, Path, list[str]], list[str]]
    reason: Callable[[str], str]


def bare_argv(settings: Settings, tmp: Path, worker: list[str]) -> list[str]:
    return ["bash", BARE, sys.executable, *worker]


def torchrun_argv(settings: Settings, tmp: Path, worker: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        # The same grace as the others get (torchrun's default is 30 s).
        "--shutdown-timeout",
        str(settings.grace),
        *worker,
    ]


def skyguard_argv(settings: Settings, tmp: Path, worker: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "devops.skypilot",
        "run",
        "--state-dir",
        str(tmp / "state"),
        "--heartbeat-timeout",
        f"{settings.timeout:g}",
        "--startup-grace",
        f"{settings.startup:g}",
        "--grace",
        str(settings.grace),
        "--",
        *torchrun_argv(settings, tmp, worker),
    ]


def ft_argv(settings: Settings, tmp: Path, worker: list[str]) -> list[str]:
    return [
        str(FT_VENV / "bin" / "ft_launcher"),
        "--standalone",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "0",
        "--term-timeout",
        str(settings.grace),
        "--workers-stop-timeout",
        str(settings.grace),
        "--ft-initial-rank-heartbeat-timeout",
        f"{settings.startup:g}",
        "--ft-rank-heartbeat-timeout",
        f"{settings.timeout:g}",
        "--ft-workload-check-interval",
        f"{settings.ft_check_interval:g}",
        *worker,
    ]


def skyguard_cadence(timeout: float) -> float:
    """How often skyguard's heartbeat monitor checks: 5 % of the timeout, 0.05-1 s."""
    return min(1.0, max(0.05, timeout * 0.05))


def ft_tuned_argv(settings: Settings, tmp: Path, worker: list[str]) -> list[str]:
    """ft_launcher checking as often as skyguard does: the best-tuned peer."""
    tuned = replace(settings, ft_check_interval=skyguard_cadence(settings.timeout))
    return ft_argv(tuned, tmp, worker)


def _first(patterns: Sequence[str], text: str) -> str:
    for pattern in patterns:
        found = re.findall(pattern, text, re.MULTILINE)
        if found:
            return str(found[0]).strip()
    return ""


def skyguard_reason(stderr: str) -> str:
    match = re.search(r"^skyguard: termination (\{.*\})$", stderr, re.MULTILINE)
    if not match:
        return ""
    record = json.loads(match.group(1))
    if record.get("forensics") and record["forensics"]["captured"]:
        # The detail ends with the stacks; the table cell keeps the verdict and the stacks.
        head = record["detail"].split("; stacks: ", 1)[0]
        return f"{record['reason']}: {head}; stacks: {record['forensics']['summary']}"
    return f"{record['reason']}: {record['detail']}"


def forensics_ms(stderr: str) -> float | None:
    match = re.search(r"^skyguard: termination (\{.*\})$", stderr, re.MULTILINE)
    forensics = json.loads(match.group(1)).get("forensics") if match else None
    return float(forensics["elapsed_ms"]) if forensics else None


def torchrun_reason(stderr: str) -> str:
    root = stderr.split("Root Cause", 1)
    if len(root) == 2:
        rank = _first([r"rank\s*:\s*(\d+)"], root[1])
        code = _first([r"exitcode\s*:\s*(.+)"], root[1])
        return f"ChildFailedError: rank {rank} exitcode {code}"
    return _first([r"(Received \S+ death signal.*)$"], stderr)


def ft_reason(stderr: str) -> str:
    return _first(
        [
            r"(Did not get (?:initial|subsequent) heartbeat\. Waited [\d.]+ seconds\.)",
            r"(failed \(exitcode: -?\d+\) local_rank: \d+)",
            r"(Received \S+ death signal.*)$",
        ],
        stderr,
    )


def bare_reason(stderr: str) -> str:
    line = _first([r"^(?:\[rank\d\]: )?(\w*(?:Error|Exception): .*)$"], stderr)
    return line[:160]


TOOLS: tuple[Tool, ...] = (
    Tool("bare", "none", bare_argv, bare_reason),
    Tool("torchrun", "none", torchrun_argv, torchrun_reason),
    Tool("ft_launcher", "nvrx", ft_argv, ft_reason),
    Tool("ft_launcher_tuned", "nvrx", ft_tuned_argv, ft_reason),
    Tool("skyguard", "skyguard", skyguard_argv, skyguard_reason),
)


@dataclass
class Marks:
    """The ranks' marks file, read as it grows."""

    path: Path
    offset: int = 0
    events: list[tuple[str, int, int, float]] = field(default_factory=list)

    def read(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        complete = data.rfind(b"\n") + 1
        self.offset += complete
        for line in data[:complete].decode().splitlines():
            event, rank, pid, at = line.split()
            self.events.append((event, int(rank), int(pid), float(at)))

    def times(self, event: str, rank: int | None = None) -> list[float]:
        return [e[3] for e in self.events if e[0] == event and rank in (None, e[1])]

    def pids(self, event: str, rank: int | None = None) -> list[int]:
        return [e[2] for e in self.events if e[0] == event and rank in (None, e[1])]


@dataclass
class RunRecord:
    tool: str
    workload: str
    repeat: int
    exit_code: int | None
    wall: float
    #: The moment latencies are measured from: the deadline for hangs, the crash,
    #: or the ranks' end for workloads that finish; None if never reached.
    reference: float | None
    detected: bool | None
    latency: float | None
    #: Reference -> no process of the job left, or None if it never happened.
    empty_after: float | None
    cancelled: bool
    orphans: list[str]
    reason: str
    supervisor_cpu: float
    supervisor_rss_mb: float
    #: The top process alone (skyguard: the runner, without torchrun below it).
    top_cpu: float
    top_rss_mb: float
    #: skyguard: ms from the hang verdict to the end of the stack capture (then SIGTERM).
    forensics_ms: float | None = None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tagged(tag: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(TAG_VAR) == tag and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def kill_tagged(tag: str) -> list[str]:
    """SIGKILL every process carrying the tag; their command lines."""
    leftovers = tagged(tag)
    described = []
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            # Paths relative to the repository: results name no machine's directories.
            command = " ".join(process.cmdline()).replace(f"{REPO}/", "")
            described.append(command[:120])
            process.kill()
    psutil.wait_procs(leftovers, timeout=5)
    return described


class Sampler:
    """Peak RSS and last CPU time of every supervisor process (not ranks, not helpers)."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.cpu: dict[int, float] = {}
        self.rss: dict[int, float] = {}
        self.tree: set[int] = set()

    def sample(self, job_pids: set[int]) -> None:
        try:
            root = psutil.Process(self.top)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            self.tree.add(process.pid)
            if process.pid in job_pids:
                continue
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                self.cpu[process.pid] = times.user + times.system
                rss = process.memory_info().rss / 2**20
                self.rss[process.pid] = max(self.rss.get(process.pid, 0.0), rss)


def run_once(
    tool: Tool, workload: Workload, settings: Settings, tag: str, keep: Path | None = None
) -> RunRecord:
    with tempfile.TemporaryDirectory(prefix="skyguard-compare-") as tmp_name:
        tmp = Path(tmp_name)
        marks = Marks(tmp / "marks")
        worker = [
            WORKER,
            "--steps",
            str(settings.steps),
            "--step-time",
            str(settings.step_time),
            "--fault",
            workload.fault,
            "--fault-step",
            str(settings.fault_step),
            "--beat",
            tool.beat,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYGUARD_", "SKYPILOT_"))}
        env.update(
            {
                TAG_VAR: tag,
                "BENCH_MARKS": str(marks.path),
                "PYTHONPATH": str(REPO),
                "MASTER_PORT": str(free_listen_port()),
                "OMP_NUM_THREADS": "1",
            }
        )
        out_path, err_path = tmp / "stdout", tmp / "stderr"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            started = time.monotonic()
            process = subprocess.Popen(
                tool.argv(settings, tmp, worker),
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                start_new_session=True,
            )
            try:
                record = watch(process, tool, workload, settings, marks, started)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        stderr = err_path.read_text(errors="replace") + out_path.read_text(errors="replace")
        record.reason = tool.reason(stderr)
        record.forensics_ms = forensics_ms(stderr)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"{workload.name}-{tool.name}-{tag[:8]}.log").write_text(stderr)
        record.orphans = kill_tagged(tag)
        return record


def _reference(
    workload: Workload, settings: Settings, marks: Marks, victim_gone: float | None
) -> float | None:
    """When the clock starts: a hang's deadline, the crashed rank's exit, the ranks' end."""
    if workload.kind in ("finish", "orphan"):
        done = marks.times("done")
        return max(done) if len(done) == 2 else None
    fault = marks.times("fault")
    if not fault:
        return None
    if workload.kind == "crash":
        return victim_gone
    # A hang's deadline: the earliest rank monitor that can fire (its last beat + timeout);
    # without beats, the fault itself + timeout (what a heartbeat would have allowed).
    last_beats = [max(times) for rank in (0, 1) if (times := marks.times("beat", rank))]
    return (min(last_beats) if last_beats else fault[0]) + settings.timeout


def watch(
    process: subprocess.Popen[bytes],
    tool: Tool,
    workload: Workload,
    settings: Settings,
    marks: Marks,
    started: float,
) -> RunRecord:
    """Poll until the tool is gone and its processes with it (or declared orphans)."""
    sampler = Sampler(process.pid)
    first_gone: float | None = None
    helper_gone: float | None = None
    victim_gone: float | None = None
    all_gone: float | None = None
    cancelled_at: float | None = None
    exited: float | None = None
    next_sample = started
    hard_deadline = started + 300
    while True:
        now = time.monotonic()
        marks.read()
        ranks = set(marks.pids("start"))
        helpers = set(marks.pids("helper"))
        job = ranks | helpers | sampler.tree
        if now >= next_sample and exited is None:
            sampler.sample(ranks | helpers)
            next_sample = now + SAMPLE
        # The fault's own victim dying is the fault, not the tool's reaction to it.
        victims = set(marks.pids("fault")) if workload.kind == "crash" else set()
        watched = ranks - victims
        if victim_gone is None and victims and not any(alive(pid) for pid in victims):
            victim_gone = now
        if first_gone is None and len(ranks) == 2 and not all(alive(pid) for pid in watched):
            first_gone = now
        if helper_gone is None and helpers and not any(alive(pid) for pid in helpers):
            helper_gone = now
        if exited is None and process.poll() is not None:
            exited = now
        if exited is not None:
            if not any(alive(pid) for pid in job):
                all_gone = now
                break
            if now >= exited + settings.settle:
                break
        reference = _reference(workload, settings, marks, victim_gone)
        if exited is None and cancelled_at is None:
            limit = hard_deadline if reference is None else reference + settings.detect_cap
            if first_gone is not None:
                # The tool has reacted: give its shutdown the grace and some, not a cancel.
                limit = max(limit, first_gone + settings.grace + 10.0)
            if now >= limit:
                # What an operator or a preemption does to a job that never ends: SIGTERM it.
                cancelled_at = now
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                hard_deadline = now + max(settings.detect_cap, settings.grace + 10.0)
        elif exited is None and now >= hard_deadline:
            process.kill()
        time.sleep(POLL)
    marks.read()
    reference = _reference(workload, settings, marks, victim_gone)
    detected, latency = _detection(workload, reference, first_gone, helper_gone, cancelled_at)
    top = process.pid
    return RunRecord(
        tool=tool.name,
        workload=workload.name,
        repeat=0,
        exit_code=process.returncode,
        wall=(exited or time.monotonic()) - started,
        reference=reference,
        detected=detected,
        latency=latency,
        empty_after=None if all_gone is None or reference is None else all_gone - reference,
        cancelled=cancelled_at is not None,
        orphans=[],
        reason="",
        supervisor_cpu=sum(sampler.cpu.values()),
        supervisor_rss_mb=sum(sampler.rss.values()),
        top_cpu=sampler.cpu.get(top, 0.0),
        top_rss_mb=sampler.rss.get(top, 0.0),
    )


def _detection(
    workload: Workload,
    reference: float | None,
    first_gone: float | None,
    helper_gone: float | None,
    cancelled_at: float | None,
) -> tuple[bool | None, float | None]:
    """Whether the tool itself reacted (before the harness had to cancel), and how fast."""
    if workload.kind == "finish":
        return None, None
    if workload.kind == "orphan":
        return helper_gone is not None and cancelled_at is None, None
    if reference is None or first_gone is None:
        return False, None
    if cancelled_at is not None and first_gone >= cancelled_at:
        return False, None
    if workload.kind == "crash":
        # A survivor that died on its own before the crashed rank was reaped: stopped at once.
        return True, max(0.0, first_gone - reference)
    return True, first_gone - reference


# --- aggregation and output ---------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarize(records: list[RunRecord]) -> list[dict[str, Any]]:
    rows = []
    for workload in WORKLOADS:
        for tool in TOOLS:
            runs = [r for r in records if r.tool == tool.name and r.workload == workload.name]
            if not runs:
                continue
            detected = [r.detected for r in runs if r.detected is not None]
            rows.append(
                {
                    "workload": workload.name,
                    "tool": tool.name,
                    "runs": len(runs),
                    "detected": f"{sum(detected)}/{len(detected)}" if detected else None,
                    "latency_s": spread([r.latency for r in runs if r.latency is not None]),
                    "empty_after_s": spread(
                        [r.empty_after for r in runs if r.empty_after is not None]
                    ),
                    "never_empty": sum(1 for r in runs if r.empty_after is None),
                    "cancelled": sum(1 for r in runs if r.cancelled),
                    "orphans_max": max(len(r.orphans) for r in runs),
                    "exit_codes": sorted({r.exit_code for r in runs if r.exit_code is not None}),
                    "reason": next((r.reason for r in runs if r.reason), ""),
                    "forensics_ms": spread(
                        [r.forensics_ms for r in runs if r.forensics_ms is not None]
                    ),
                    "wall_s": spread([r.wall for r in runs]),
                    "supervisor_cpu_s": spread([r.supervisor_cpu for r in runs]),
                    "supervisor_rss_mb": spread([r.supervisor_rss_mb for r in runs]),
                    "top_cpu_s": spread([r.top_cpu for r in runs]),
                    "top_rss_mb": spread([r.top_rss_mb for r in runs]),
                }
            )
    return rows


def paired_ratios(records: list[RunRecord], tool: str, baseline: str) -> list[float]:
    """Wall-time ratios of ``tool`` to ``baseline`` within each repeat of workload (1).

    Runs of one repeat follow each other, so a change of load on the machine
    between repeats cancels out of the ratio; the median of the ratios is reported.
    """
    walls = {
        (r.tool, r.repeat): r.wall for r in records if r.workload == "finish" and r.exit_code == 0
    }
    repeats = sorted({repeat for name, repeat in walls if name == tool})
    return [
        walls[(tool, repeat)] / walls[(baseline, repeat)]
        for repeat in repeats
        if (baseline, repeat) in walls
    ]


def overhead(rows: list[dict[str, Any]], records: list[RunRecord]) -> list[dict[str, Any]]:
    finish = {row["tool"]: row for row in rows if row["workload"] == "finish"}
    return [
        {
            "tool": name,
            "wall_vs_bare": spread(paired_ratios(records, name, "bare")),
            "wall_vs_torchrun": spread(paired_ratios(records, name, "torchrun")),
            "wall_s": row["wall_s"],
            "supervisor_cpu_s": row["supervisor_cpu_s"]["median"],
            "supervisor_rss_mb": row["supervisor_rss_mb"]["median"],
            "top_cpu_s": row["top_cpu_s"]["median"],
            "top_rss_mb": row["top_rss_mb"]["median"],
            "n": row["runs"],
        }
        for name, row in finish.items()
    ]


def _ratio(value: dict[str, float] | None) -> str:
    if value is None:
        return "—"
    if value["n"] == 1:
        return f"{value['median']:.3f}"
    return f"{value['median']:.3f} ({value['min']:.3f}-{value['max']:.3f})"


def _seconds(value: dict[str, float] | None) -> str:
    if value is None:
        return "—"
    if value["n"] == 1 or value["max"] - value["min"] < 0.005:
        return f"{value['median']:.2f}"
    return f"{value['median']:.2f} ({value['min']:.2f}-{value['max']:.2f})"


def _codes(codes: list[int]) -> str:
    if not codes:
        return "—"
    # As a shell reports it: killed by signal N -> 128+N.
    shown = "/".join(str(128 - code if code < 0 else code) for code in codes)
    return f"{shown} (retry)" if RETRY_CODE in codes else shown


def _cell(text: str, width: int = 240) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def _ms(value: dict[str, float] | None) -> str:
    if not value:
        return "—"
    if value["min"] == value["max"]:
        return f"{value['median']:.0f}"
    return f"{value['median']:.0f} ({value['min']:.0f}-{value['max']:.0f})"


def markdown(result: dict[str, Any]) -> str:
    settings = result["settings"]
    lines = [
        f"Supervisors compared ({result['date']}, {result['machine']}; "
        f"heartbeat timeout {settings['timeout']:g} s, grace {settings['grace']} s, "
        f"repeats {result['repeats']}; seconds as median (min-max))",
        "",
        "| workload | tool | detected | latency past deadline | no process left after "
        "| orphans | exit code | stacks: verdict -> SIGTERM, ms | what a person is told |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    titles = {w.name: w.title for w in WORKLOADS}
    for row in result["rows"]:
        empty = _seconds(row["empty_after_s"])
        if row["never_empty"] == row["runs"]:
            empty = "never"
        elif row["never_empty"]:
            empty = f"{empty}; never in {row['never_empty']}/{row['runs']}"
        if row["cancelled"]:
            empty += f" (cancelled {row['cancelled']}/{row['runs']})"
        lines.append(
            f"| {titles[row['workload']]} | {row['tool']} | {row['detected'] or '—'} "
            f"| {_seconds(row['latency_s'])} | {empty} | {row['orphans_max']} "
            f"| {_codes(row['exit_codes'])} | {_ms(row.get('forensics_ms'))} "
            f"| {_cell(row['reason']) or '—'} |"
        )
    lines += [
        "",
        "Overhead on workload (1): wall time from start to the tool's exit as a ratio to the "
        "bare command and to torchrun (median of the ratios within each repeat, min-max); "
        "CPU seconds and peak RSS of every tool process that is not a rank (for skyguard "
        "runner + torchrun, the runner alone in brackets)",
        "",
        "| tool | wall / bare | wall / torchrun | wall s | supervisor CPU s "
        "| supervisor RSS MB | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["overhead"]:
        cpu = f"{row['supervisor_cpu_s']:.2f}"
        rss = f"{row['supervisor_rss_mb']:.0f}"
        if row["tool"] == "skyguard":
            cpu += f" (runner {row['top_cpu_s']:.2f})"
            rss += f" (runner {row['top_rss_mb']:.0f})"
        lines.append(
            f"| {row['tool']} | {_ratio(row['wall_vs_bare'])} "
            f"| {_ratio(row['wall_vs_torchrun'])} | {_seconds(row['wall_s'])} "
            f"| {cpu} | {rss} | {row['n']} |"
        )
    for note in result["notes"]:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines)


# --- driver -------------------------------------------------------------------------------


_live_tags: list[str] = []


def _cleanup_all() -> None:
    for tag in _live_tags:
        kill_tagged(tag)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _cleanup_all()
    raise SystemExit(128 + signum)


def ft_version() -> str | None:
    python = FT_VENV / "bin" / "python"
    if not python.exists():
        return None
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "from importlib.metadata import version; print(version('nvidia-resiliency-ext'))",
        ],
        capture_output=True,
        text=True,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def plan(
    tools: Sequence[Tool], workloads: Sequence[Workload], repeats: int, finish_repeats: int
) -> Iterator[tuple[int, Workload, Tool]]:
    """Round-robin: every repeat runs each workload under each tool, so noise is shared.

    Workload (1) gets ``finish_repeats`` repeats: its wall-time ratios need more.
    """
    for repeat in range(max(repeats, finish_repeats)):
        for workload in workloads:
            if repeat >= (finish_repeats if workload.kind == "finish" else repeats):
                continue
            for tool in tools:
                yield repeat, workload, tool


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool and workload")
    parser.add_argument(
        "--overhead-repeats",
        type=int,
        default=5,
        help="runs of workload (1), whose wall-time ratios are the overhead figures",
    )
    parser.add_argument(
        "--repeat-undetected",
        action="store_true",
        help="repeat hangs a tool did not detect in its first run (each costs the detect cap)",
    )
    parser.add_argument("--tools", default=",".join(t.name for t in TOOLS))
    parser.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS))
    parser.add_argument("--timeout", type=float, default=6.0, help="heartbeat timeout, s")
    parser.add_argument("--grace", type=int, default=3, help="SIGTERM -> SIGKILL grace, s")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--step-time", type=float, default=0.1)
    parser.add_argument(
        "--ft-check-interval",
        type=float,
        default=5.0,
        help="ft_launcher's workload_check_interval (its default: 5 s)",
    )
    parser.add_argument("--no-setup", action="store_true", help="do not run setup.sh")
    parser.add_argument("--keep-logs", type=Path, help="copy each run's output into this folder")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="print the table of a saved run; run nothing"
    )
    args = parser.parse_args(argv)
    if args.report is not None:
        print(markdown(json.loads(args.report.read_text())))
        return 0

    settings = Settings(
        timeout=args.timeout,
        grace=args.grace,
        startup=120.0,
        steps=args.steps,
        step_time=args.step_time,
        fault_step=10,
        detect_cap=args.ft_check_interval + 3.0,
        settle=2.0,
        ft_check_interval=args.ft_check_interval,
    )
    tools = [t for t in TOOLS if t.name in args.tools.split(",")]
    workloads = [w for w in WORKLOADS if w.name in args.workloads.split(",")]
    notes = []
    if any(t.name == "ft_launcher" for t in tools):
        if not (FT_VENV / "bin" / "ft_launcher").exists() and not args.no_setup:
            subprocess.run(["bash", str(HERE / "setup.sh")], check=False)
        if not (FT_VENV / "bin" / "ft_launcher").exists():
            notes.append("ft_launcher skipped: benchmarks/compare/setup.sh did not install it")
            tools = [t for t in tools if t.name != "ft_launcher"]
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    records: list[RunRecord] = []
    undetected: set[tuple[str, str]] = set()
    began = time.monotonic()
    try:
        for repeat, workload, tool in plan(tools, workloads, args.repeats, args.overhead_repeats):
            if (tool.name, workload.name) in undetected:
                continue
            tag = uuid.uuid4().hex
            _live_tags.append(tag)
            record = run_once(tool, workload, settings, tag, args.keep_logs)
            record.repeat = repeat
            _live_tags.remove(tag)
            records.append(record)
            print(
                f"[{time.monotonic() - began:6.1f}s] run {repeat + 1} {workload.name:16} "
                f"{tool.name:12} exit={record.exit_code} detected={record.detected} "
                f"latency={record.latency} empty_after={record.empty_after} "
                f"orphans={len(record.orphans)} wall={record.wall:.2f}",
                file=sys.stderr,
                flush=True,
            )
            if record.detected is False and not args.repeat_undetected:
                undetected.add((tool.name, workload.name))
    finally:
        _cleanup_all()
    if undetected and not args.repeat_undetected:
        notes.append(
            "a hang or orphan a tool missed in its first run is not repeated (n=1 there): "
            "each such run costs the whole detect cap"
        )
    versions = {"python": platform.python_version()}
    if (version := ft_version()) is not None:
        versions["nvidia-resiliency-ext"] = version
    rows = summarize(records)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"
        ),
        "versions": versions,
        "settings": asdict(settings),
        "repeats": args.repeats,
        "duration_s": round(time.monotonic() - began, 1),
        "rows": rows,
        "overhead": overhead(rows, records),
        "notes": notes,
        "runs": [asdict(r) for r in records],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temp = args.output.with_suffix(".tmp")
    temp.write_text(json.dumps(result, indent=2) + "\n")
    temp.replace(args.output)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

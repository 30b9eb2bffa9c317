"""``skyguard status RUN_ID``: a job's state and why each attempt ended.

``sky jobs logs`` shows only the last attempt of a managed job, so the attempt
history comes from the runner's state directory (``termination.json``, which
keeps every attempt) when it is reachable from here (``--state-dir``: the
shared path, or the bucket mounted or synced locally), and otherwise from the
``skyguard: termination {...}`` lines the runner prints at the end of each
attempt: read from the jobs controller's log, which relays every attempt, or
from the job's own log (the last attempt) when the controller log has none.

Client side: ``sky`` is imported only to ask SkyPilot (never with ``--offline``).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devops.skypilot.client.launch.request import LaunchError, check_name
from devops.skypilot.client.launch.submit import quiet_libraries, sky_message, sky_output
from devops.skypilot.common.termination import EXIT_CONFIG_ERROR

#: What the runner prints once per attempt (``devops.skypilot.node.runner``).
TERMINATION_LINE = re.compile(r"skyguard: termination (\{.*\})\s*$")
TERMINATION_FILE = "termination.json"


class StatusError(Exception):
    """The run or its records could not be found or read: one line, exit 1."""


@dataclass(frozen=True)
class JobInfo:
    """What SkyPilot says about the job."""

    name: str
    job_id: int
    status: str
    recoveries: int | None = None
    cluster: str | None = None


@dataclass(frozen=True)
class Report:
    run: str
    job: JobInfo | None
    #: Every attempt's record, oldest first (may be only the last one).
    history: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    #: Where the history came from: a termination.json path, "controller log" or "job log".
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "job_id": self.job.job_id if self.job else None,
            "status": self.job.status if self.job else None,
            "recoveries": self.job.recoveries if self.job else None,
            "cluster": self.job.cluster if self.job else None,
            "last": dict(self.history[-1]) if self.history else None,
            "history": [dict(item) for item in self.history],
            "source": self.source,
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="run id (managed-job name) or job id")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="RUN_ID is a cluster from `skyguard launch --cluster`; show its latest job",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="read the attempt history from here: the run's state dir, or the state root "
        "holding one dir per task (a shared path, or the bucket mounted locally)",
    )
    parser.add_argument(
        "--offline", action="store_true", help="only read --state-dir; do not ask SkyPilot"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


# ---------------------------------------------------------------- records


def records_from_log(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Every termination record printed in a log, oldest first; garbled lines are skipped."""
    records = []
    for line in lines:
        match = TERMINATION_LINE.search(line)
        if match is None:
            continue
        try:
            record = json.loads(match.group(1))
        except ValueError:
            continue
        if isinstance(record, dict) and "reason" in record:
            records.append(record)
    return records


def _task_dirs(root: Path, run: str, job_id: int | None) -> list[Path]:
    """Run state dirs under a state root that belong to ``run``."""
    # Named by the run key (devops/skypilot/common/identity.py): <run>-<8 hex> from
    # `skyguard launch`, <run>_<job id>-<task> for a plain managed job, and the whole
    # SKYPILOT_TASK_ID (sky-[managed-]<ts>_<run>_<job id>...) for a cluster job.
    number = str(job_id) if job_id is not None else r"\d+"
    by_job = re.compile(rf"(sky(-managed)?-[0-9-]+_)?{re.escape(run)}_{number}(-\d+)?")
    # A stamped key does not tell the job id: the newest record decides.
    stamped = re.compile(rf"{re.escape(run)}-[0-9a-f]{{8}}")
    return [
        path
        for path in root.iterdir()
        if path.is_dir() and (by_job.fullmatch(path.name) or stamped.fullmatch(path.name))
    ]


def find_termination_file(state_dir: Path, run: str, job_id: int | None) -> Path | None:
    """``termination.json`` of the run: in ``state_dir`` itself or in a run dir below it
    (the one whose last attempt ended last, when several launches share the name)."""
    for candidate in (state_dir / TERMINATION_FILE, state_dir / "node-0" / TERMINATION_FILE):
        if candidate.is_file():
            return candidate
    if not state_dir.is_dir():
        return None
    found = [
        candidate
        for task_dir in _task_dirs(state_dir, run, job_id)
        for candidate in (task_dir / "node-0" / TERMINATION_FILE, task_dir / TERMINATION_FILE)
        if candidate.is_file()
    ]
    return max(found, key=_ended_at, default=None)


def _ended_at(path: Path) -> str:
    """The record's ``ended_at`` (ISO 8601, so it sorts), or '' when unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return str(data.get("ended_at", "")) if isinstance(data, dict) else ""
    except (OSError, ValueError):
        return ""


def history_from_file(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise StatusError(f"cannot read {path}: {error.strerror}") from None
    except ValueError:
        raise StatusError(f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise StatusError(f"{path} is not a JSON object")
    history = data.get("history")
    if isinstance(history, list) and history:
        return [item for item in history if isinstance(item, dict)]
    return [{k: v for k, v in data.items() if k != "history"}]


# ---------------------------------------------------------------- SkyPilot


def _managed_job(run: str) -> JobInfo:
    import sky

    job_ids = [int(run)] if run.isdigit() else None
    request = sky.jobs.queue_v2(
        refresh=False,
        job_ids=job_ids,
        name_match=None if job_ids else run,
        fields=["job_id", "job_name", "status", "recovery_count"],
    )
    records, *_ = sky.get(request)
    matching = [r for r in records if job_ids or r.job_name == run]
    if not matching:
        raise StatusError(f"no managed job named {run!r} (see `sky jobs queue`)")
    latest = max(matching, key=lambda r: int(r.job_id))
    status = latest.status
    return JobInfo(
        name=str(latest.job_name),
        job_id=int(latest.job_id),
        status=str(getattr(status, "value", status)),
        recoveries=int(latest.recovery_count or 0),
    )


def _cluster_job(cluster: str) -> JobInfo:
    import sky

    records = sky.get(sky.queue(cluster))
    if not records:
        raise StatusError(f"cluster {cluster!r} has no jobs")
    latest = max(records, key=lambda r: int(r["job_id"]))
    status = latest["status"]
    return JobInfo(
        name=cluster,
        job_id=int(latest["job_id"]),
        status=str(getattr(status, "value", status)),
        cluster=cluster,
    )


def job_log(job: JobInfo, controller: bool = False) -> list[str]:
    """The job's log as SkyPilot returns it.

    For a managed job the job log holds only the last attempt; the controller's
    log relays every attempt's output, so it holds every termination line.
    """
    import sky

    buffer = io.StringIO()
    if job.cluster is None:
        sky.jobs.tail_logs(
            job_id=job.job_id, follow=False, controller=controller, output_stream=buffer
        )
    else:
        sky.tail_logs(job.cluster, job.job_id, follow=False, output_stream=buffer)
    return buffer.getvalue().splitlines()


def history_from_logs(job: JobInfo) -> tuple[list[dict[str, Any]], str]:
    """Every attempt from the controller log when it has them, else the job log."""
    if job.cluster is None:
        records = records_from_log(job_log(job, controller=True))
        if records:
            return records, "controller log"
    return records_from_log(job_log(job)), "job log"


# ---------------------------------------------------------------- output


def _row(record: Mapping[str, Any]) -> str:
    duration = record.get("duration")
    took = f"{duration:.1f}s" if isinstance(duration, (int, float)) else "-"
    return (
        f"  {record.get('attempt', '?')!s:>7}  {record.get('reason', '?')!s:<20} "
        f"{record.get('exit_code', '?')!s:>4}  {took:>9}  {record.get('ended_at', '-')}  "
        f"{record.get('detail', '')}"
    )


def format_report(report: Report) -> str:
    lines = [f"run         {report.run}"]
    if report.job is not None:
        where = f"cluster {report.job.cluster} job" if report.job.cluster else "managed job"
        lines.append(f"job         {where} {report.job.job_id}: {report.job.status}")
        if report.job.recoveries is not None:
            lines.append(f"recoveries  {report.job.recoveries}")
    if not report.history:
        lines.append("attempts    none recorded yet")
        return "\n".join(lines)
    lines.append(f"attempts    {len(report.history)} (from {report.source})")
    lines.append(f"  {'attempt':>7}  {'reason':<20} {'exit':>4}  {'duration':>9}  ended  detail")
    lines.extend(_row(record) for record in report.history)
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def build_report(args: argparse.Namespace) -> Report:
    run = str(args.run_id)
    if not run.isdigit():
        check_name(run, "RUN_ID")
    if args.offline and not args.state_dir:
        raise LaunchError("--offline needs --state-dir")
    job = None
    if not args.offline:
        with sky_output(verbose=False):
            job = _cluster_job(run) if args.cluster else _managed_job(run)
    history: list[dict[str, Any]] = []
    source = ""
    if args.state_dir:
        state_dir = Path(args.state_dir).expanduser()
        if not state_dir.exists():
            raise StatusError(f"--state-dir {state_dir}: no such directory")
        name = job.name if job is not None and job.cluster is None else run
        found = find_termination_file(state_dir, name, job.job_id if job else None)
        if found is not None:
            history, source = history_from_file(found), str(found)
    if not history and job is not None:
        with sky_output(verbose=False):
            history, source = history_from_logs(job)
    return Report(run=run, job=job, history=history, source=source)


def main(args: argparse.Namespace) -> int:
    """0: shown; 1: not found or SkyPilot failed; 2: bad input."""
    quiet_libraries(verbose=False)
    try:
        report = build_report(args)
    except LaunchError as error:
        print(f"skyguard status: error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except StatusError as error:
        print(f"skyguard status: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # SkyPilot's errors (API server down, no such job, ...)
        print(f"skyguard status: error: {sky_message(error)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report))
    if report.job is None and not report.history:
        print(f"skyguard status: no attempts recorded for {report.run}", file=sys.stderr)
        return 1
    return 0

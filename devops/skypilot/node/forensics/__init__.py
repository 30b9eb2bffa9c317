"""Hang forensics: before a hung tree is stopped, say which rank is stuck and where.

On a hang verdict (:data:`CAPTURE_ON`) the runner calls :func:`before_stop` with the
live processes of the tree, before SIGTERM. It captures every process's Python
stack at once (:mod:`.capture`: py-spy, faulthandler as the no-ptrace fallback),
within ``--forensics-timeout`` seconds on the runner's monotonic clock, writes
them under ``<state-dir>/forensics/attempt-N/`` and returns the one-line summary
(:mod:`.summary`) for the record. A crash or a success never gets here.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import psutil

from devops.skypilot.common.files import write_atomic
from devops.skypilot.common.forensics import Forensics
from devops.skypilot.common.termination import TerminationReason, Verdict
from devops.skypilot.node.forensics.capture import Captured, Target, capture, find_py_spy
from devops.skypilot.node.forensics.flight import TIMEOUT as FLIGHT_TIMEOUT
from devops.skypilot.node.forensics.flight import analyse as analyse_flight_recorder
from devops.skypilot.node.forensics.stacks import format_stack
from devops.skypilot.node.forensics.summary import summarize

logger = logging.getLogger(__name__)

#: Verdicts that mean "something is stuck": the stacks say where.
CAPTURE_ON = frozenset(
    {
        TerminationReason.HEARTBEAT_TIMEOUT,
        # A collective timed out (the log line came before torch's watchdog killed it).
        TerminationReason.NCCL_ERROR,
        # Another node decided: our ranks are most likely waiting for its ranks.
        TerminationReason.PEER_FAILED,
    }
)
#: Written once per capture, next to the raw py-spy / faulthandler output.
STACKS_FILE = "stacks.txt"


def attempt_dir(state_dir: Path, attempt: int) -> Path:
    return state_dir / "forensics" / f"attempt-{attempt}"


def rank_of(process: psutil.Process) -> int | None:
    """The process's ``RANK`` from its environment, if it has one we may read."""
    try:
        raw = process.environ().get("RANK")
    except psutil.Error:
        return None
    return int(raw) if raw is not None and raw.isdigit() else None


def before_stop(
    verdict: Verdict | None,
    processes: Sequence[psutil.Process],
    directory: Path,
    timeout: float,
    py_spy: str | None = None,
) -> Forensics | None:
    """Capture and summarise the tree's stacks if ``verdict`` is a hang; never raises."""
    if verdict is None or verdict.reason not in CAPTURE_ON or timeout <= 0 or not processes:
        return None
    started = time.monotonic()
    try:
        targets = [Target(process.pid, rank_of(process)) for process in processes]
        results = capture(targets, directory, started + timeout, py_spy or find_py_spy())
        summary = summarize(results, verdict.ranks)
        _write_stacks(directory / STACKS_FILE, summary, results)
    except Exception:  # forensics must never stand between a hang and the stop
        logger.exception("skyguard: stack capture failed; stopping the tree without it")
        return None
    elapsed = time.monotonic() - started
    refused = [
        item
        for item in results
        if item.source != "py-spy" and item.error.startswith(("py-spy:", "py-spy timed out"))
    ]
    if refused:
        # Said once: py-spy failing on every rank usually means ptrace is forbidden here.
        why = refused[0].error.split("; ")[0].removeprefix("py-spy: ").removeprefix("py-spy ")
        logger.warning(
            "skyguard: py-spy gave no stack for %d of %d process(es): %s",
            len(refused),
            len(results),
            why,
        )
    logger.warning("skyguard: stacks (%.0f ms): %s", elapsed * 1000, summary)
    return Forensics(
        summary=summary,
        directory=str(directory),
        processes=len(results),
        captured=sum(1 for item in results if item.stack is not None),
        elapsed_ms=round(elapsed * 1000, 1),
        sources=tuple(sorted({item.source for item in results if item.source})),
    )


def after_stop(
    forensics: Forensics | None,
    env: Mapping[str, str],
    since: float,
    directory: Path,
    timeout: float,
) -> Forensics | None:
    """Add the analysis of this attempt's flight-recorder dumps, if torch wrote any.

    Whatever the verdict (a collective timeout often ends the job as a crash): the
    dumps exist only when a collective timed out. ``since`` is the attempt's wall
    start; ``timeout`` 0 (``--forensics-timeout 0``) turns it off.
    """
    if timeout <= 0:
        return forensics
    line = analyse_flight_recorder(env, since, directory, max(FLIGHT_TIMEOUT, timeout))
    if line is None:
        return forensics
    logger.warning("skyguard: %s", line)
    if forensics is None:
        forensics = Forensics("", str(directory), processes=0, captured=0, elapsed_ms=0.0)
    return dataclasses.replace(forensics, flight_recorder=line)


def _write_stacks(path: Path, summary: str, results: Collection[Captured]) -> None:
    lines = [summary, ""]
    for item in results:
        rank = "" if item.target.rank is None else f"rank {item.target.rank} "
        head = f"{rank}pid {item.target.pid}"
        if item.stack is None:
            lines.append(f"{head}: no stack ({item.error or 'unknown'})\n")
        else:
            # With a stack from faulthandler, why py-spy gave none (ptrace forbidden?).
            why = f"; {item.error}" if item.error else ""
            lines.append(f"{head} ({item.source}{why}):\n{format_stack(item.stack)}\n")
    write_atomic(path, "\n".join(lines))

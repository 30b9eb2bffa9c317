"""What the runner tells the outside world: a job context, phases, and observers.

Observers (notifications, the multi-node coordinator) are handed in by the CLI;
the runner never imports them. An observer must bound its own time and may raise:
the runner logs the error and carries on, so an observer can never change the
exit code or leave the command running.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from devops.skypilot.common.termination import EXIT_RETRY, Termination, TerminationReason


class Phase(str, Enum):
    """Where a job is in its life, as people are told about it."""

    STARTED = "started"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


def phase_for(termination: Termination) -> Phase:
    """The phase an ended attempt puts the job in."""
    if termination.reason is TerminationReason.COMPLETED:
        return Phase.SUCCEEDED
    if termination.reason is TerminationReason.SIGNALLED:
        # The runner cannot tell `sky jobs cancel` from a preemption: both are a
        # SIGTERM. SkyPilot restarts the second and not the first.
        return Phase.CANCELLED
    if termination.exit_code == EXIT_RETRY:
        return Phase.RETRYING
    return Phase.FAILED


@dataclass(frozen=True)
class JobContext:
    """Who this runner is: the same on every attempt of a task but for ``attempt``."""

    job_name: str
    task_id: str
    attempt: int
    node_rank: int
    num_nodes: int
    state_dir: Path
    #: ISO 8601 UTC time the attempt started.
    started_at: str


class RunObserver(ABC):
    """Told when an attempt starts and how it ended. Must bound its own time."""

    @abstractmethod
    def on_start(self, ctx: JobContext) -> None:
        """The command is about to start."""

    @abstractmethod
    def on_end(self, ctx: JobContext, termination: Termination) -> None:
        """The attempt ended and its record is written; the runner exits next."""

    def close(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Release what the observer holds; called last, also when the attempt never started."""

"""What the runner tells the outside world: a job context, phases, and observers.

Observers (notifications, the multi-node coordinator) are handed in by the CLI;
the runner never imports them. An observer must bound its own time and may raise:
the runner logs the error and carries on, so an observer can never change the
exit code or leave the command running.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from devops.skypilot.common.termination import (
    EXIT_RETRY,
    Announcer,
    Termination,
    TerminationReason,
    Verdict,
)
from devops.skypilot.common.values import ConfigError

#: Set by the recipe next to its ``event_callback``: SkyPilot's jobs controller runs
#: ``skyguard notify-event`` for this task.
EVENTS_FROM_CONTROLLER_ENV = "SKYGUARD_EVENTS_FROM_CONTROLLER"
#: Set by SkyPilot's jobs controller on every task it manages (``sky/jobs/controller.py``);
#: the recipe's env alone is not enough: ``sky launch`` of the recipe runs no callback.
MANAGED_JOB_ENV = "SKYPILOT_MANAGED_JOB_ID"

#: Who announces each end when the jobs controller runs skyguard's callback (any reason
#: not here: the runner, which decided it). A signal comes from outside: SIGTERM is the
#: same for ``sky jobs cancel`` and a preemption, and only the controller knows which it
#: was (CANCELLED or RECOVERING), also when it cannot see the runner's sent-log. An end
#: relaying another node's decision (peer_failed) is looked up by that node's reason.
ANNOUNCER_WITH_CALLBACK: Mapping[TerminationReason, Announcer] = {
    TerminationReason.SIGNALLED: Announcer.CONTROLLER,
}


def announcer(
    reason: TerminationReason, verdict: Verdict | None, left: frozenset[TerminationReason]
) -> Announcer:
    """Who announces an end of ``reason``, given :func:`left_to_controller`'s answer.

    An end that relays another node's decision (``verdict.relayed``: the head's
    peer_failed after a worker was SIGTERMed) goes by the deciding node's reason: a
    cancel or preemption that reached a worker first is the controller's to announce
    as much as one that reached the head. Only where that verdict made the end: a
    signal of this runner's own, or the crash-loop guard, decides it otherwise.
    """
    relayed = verdict.relayed if verdict is not None and verdict.reason is reason else None
    return Announcer.CONTROLLER if (relayed or reason) in left else Announcer.RUNNER


def left_to_controller(env: Mapping[str, str]) -> frozenset[TerminationReason]:
    """The ends this runner records and leaves to the jobs controller to announce."""
    marker = env.get(EVENTS_FROM_CONTROLLER_ENV, "").strip()
    if marker not in ("", "0", "1"):
        raise ConfigError(f"{EVENTS_FROM_CONTROLLER_ENV}={marker!r}: use 1 (the recipe's) or 0")
    if marker != "1" or not env.get(MANAGED_JOB_ENV, "").strip():
        return frozenset()
    return frozenset(
        reason for reason, who in ANNOUNCER_WITH_CALLBACK.items() if who is Announcer.CONTROLLER
    )


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

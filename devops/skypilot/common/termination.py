"""Why a job ended, and the exit code that tells SkyPilot what to do about it.

Data flows one way: monitors produce a :class:`Verdict`, the runner gathers an
:class:`Outcome`, :func:`decide` turns it into a :class:`Decision`, and the runner
writes a :class:`Termination` record. Every policy here is a table.

Exit codes (``recipes/job.yaml`` lists :data:`EXIT_RETRY` in
``job_recovery.recover_on_exit_codes``; a test keeps the two equal):

====  =====================================================================
0     the command succeeded
75    retryable end (EX_TEMPFAIL): hang, NCCL/GPU fault, peer failed,
      runner signalled (cancel / preemption); SkyPilot restarts the job
N     the command failed on its own with code N (75 is remapped to 1)
128+N the command was killed by signal N on its own
2     bad configuration, nothing was started
124   max runtime reached across all attempts (as ``timeout(1)``)
125   crash loop / retry budget spent: retrying would not help
====  =====================================================================
"""

from __future__ import annotations

import dataclasses
import signal as signal_module
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from devops.skypilot.common import fields
from devops.skypilot.common.fields import checked
from devops.skypilot.common.forensics import Forensics

EXIT_SUCCESS = 0
EXIT_CONFIG_ERROR = 2
EXIT_RETRY = 75
EXIT_MAX_RUNTIME = 124
EXIT_CRASH_LOOP = 125
#: What a child's own exit code 75 becomes, so it cannot trigger a SkyPilot retry.
EXIT_REMAPPED_RETRY = 1


class TerminationReason(str, Enum):
    """Why an attempt ended. Payloads (exit code, errno, signal) live in the record, never here."""

    COMPLETED = "completed"
    """The command exited 0."""
    JOB_FAILED = "job_failed"
    """The command exited non-zero or was killed by a signal, on its own."""
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    """No heartbeat for ``--heartbeat-timeout`` seconds: the job is hung."""
    HEARTBEAT_UNREADABLE = "heartbeat_unreadable"
    """The heartbeat file could not be read at the deadline (errno in the detail)."""
    MAX_RUNTIME_REACHED = "max_runtime_reached"
    """The runtime budget, summed over every attempt of the task, is spent."""
    CRASH_LOOP = "crash_loop"
    """Retryable ends came too often or too many: retrying would not help."""
    SIGNALLED = "signalled"
    """The runner got SIGTERM/SIGINT/SIGHUP: cancel, preemption or node shutdown."""
    NCCL_ERROR = "nccl_error"
    """A collective failed or timed out, or the NCCL preflight failed."""
    CUDA_ERROR = "cuda_error"
    """A GPU fault: out of memory, illegal memory access, Xid, ECC, fallen off the bus."""
    PEER_FAILED = "peer_failed"
    """Another node of the job decided to stop (its reason is in the detail)."""
    CONFIG_ERROR = "config_error"
    """The runner's own configuration was bad; nothing was started."""
    RECORD_LOST = "record_lost"
    """Only in the history: an earlier attempt whose record was unreadable and set
    aside. It counts as a retryable end that spent the budget, so a state dir that
    keeps getting corrupted cannot reset the count and retry forever."""
    # The ends below are never decided by the runner: only SkyPilot's jobs controller
    # sees them, and reports them through ``skyguard notify-event`` (devops/skypilot/controller).
    NODE_LOST = "node_lost"
    """The node went away before its runner could record an end (a preemption without
    grace, a hardware failure); SkyPilot is recovering the job."""
    SETUP_FAILED = "setup_failed"
    """The task's ``setup`` failed: the runner never started."""
    LAUNCH_FAILED = "launch_failed"
    """The cluster never came up: no resources anywhere, or SkyPilot's prechecks failed."""
    CONTROLLER_FAILED = "controller_failed"
    """SkyPilot's jobs controller itself failed while managing the job."""

    @property
    def retryable(self) -> bool:
        """Whether SkyPilot should restart the job (subject to the retry budget)."""
        return REASON_POLICY[self].retryable

    @property
    def counts_against_budget(self) -> bool:
        """Whether a retryable end of this kind spends the retry budget."""
        return REASON_POLICY[self].counts_against_budget


@dataclass(frozen=True)
class ReasonPolicy:
    retryable: bool
    #: Fixed exit code, or None when the code comes from the child (or from retrying).
    exit_code: int | None
    #: Cancels and preemptions are not the job's fault; they never spend the budget.
    counts_against_budget: bool = True


REASON_POLICY: Mapping[TerminationReason, ReasonPolicy] = {
    TerminationReason.COMPLETED: ReasonPolicy(retryable=False, exit_code=EXIT_SUCCESS),
    TerminationReason.JOB_FAILED: ReasonPolicy(retryable=False, exit_code=None),
    TerminationReason.HEARTBEAT_TIMEOUT: ReasonPolicy(retryable=True, exit_code=None),
    TerminationReason.HEARTBEAT_UNREADABLE: ReasonPolicy(retryable=True, exit_code=None),
    TerminationReason.MAX_RUNTIME_REACHED: ReasonPolicy(
        retryable=False, exit_code=EXIT_MAX_RUNTIME
    ),
    TerminationReason.CRASH_LOOP: ReasonPolicy(retryable=False, exit_code=EXIT_CRASH_LOOP),
    TerminationReason.SIGNALLED: ReasonPolicy(
        retryable=True, exit_code=None, counts_against_budget=False
    ),
    TerminationReason.NCCL_ERROR: ReasonPolicy(retryable=True, exit_code=None),
    TerminationReason.CUDA_ERROR: ReasonPolicy(retryable=True, exit_code=None),
    TerminationReason.PEER_FAILED: ReasonPolicy(retryable=True, exit_code=None),
    TerminationReason.CONFIG_ERROR: ReasonPolicy(retryable=False, exit_code=EXIT_CONFIG_ERROR),
    TerminationReason.RECORD_LOST: ReasonPolicy(retryable=True, exit_code=None),
    # Not the job's fault, and no runner was there to count it.
    TerminationReason.NODE_LOST: ReasonPolicy(
        retryable=True, exit_code=None, counts_against_budget=False
    ),
    TerminationReason.SETUP_FAILED: ReasonPolicy(retryable=False, exit_code=None),
    TerminationReason.LAUNCH_FAILED: ReasonPolicy(retryable=False, exit_code=None),
    TerminationReason.CONTROLLER_FAILED: ReasonPolicy(retryable=False, exit_code=None),
}


@dataclass(frozen=True)
class Verdict:
    """What a monitor decided: stop the job, for this reason."""

    reason: TerminationReason
    detail: str
    #: Set by the runner from ``Monitor.name``; monitors leave it empty.
    monitor: str = ""
    #: An exit code the verdict imposes: a peer node's final code, so that every
    #: node of a job ends alike and SkyPilot does not restart a job one node gave up on.
    exit_code: int | None = None
    #: Ranks the verdict blames (the ones that stopped beating first), if it knows.
    ranks: tuple[int, ...] = ()
    #: The deciding node's own reason when the verdict relays another node's decision
    #: (peer_failed); who announces the end goes by it (``lifecycle.announcer``).
    relayed: TerminationReason | None = None


@dataclass(frozen=True)
class Outcome:
    """Everything the runner gathered about how one attempt ended."""

    #: ``Popen.returncode`` convention: >= 0 exit code, < 0 killed by that signal.
    #: None when the child never ran (bad config, budget already spent).
    child_returncode: int | None
    #: The first monitor verdict, if a monitor ended the attempt.
    verdict: Verdict | None = None
    #: Signal the runner itself received (cancel / preemption).
    runner_signal: int | None = None
    #: A verdict explaining a failure after the fact (a fatal log line), used only
    #: when the child failed on its own.
    explanation: Verdict | None = None
    #: How long this attempt ran, seconds.
    duration: float = 0.0


@dataclass(frozen=True)
class RetryPolicy:
    """The runner's brake on retryable ends: SkyPilot restarts on 75 without limit."""

    #: Retryable ends (that count against the budget) allowed before giving up.
    max_retries: int = 3
    #: Crash loop: this many consecutive failed ends ...
    crash_loop_count: int = 3
    #: ... each shorter than this many seconds. 0 disables the rule.
    crash_loop_window: float = 60.0


@dataclass(frozen=True)
class Decision:
    reason: TerminationReason
    exit_code: int
    detail: str
    monitor: str = ""


@dataclass(frozen=True)
class AttemptSummary:
    """The part of a past attempt that the retry policy looks at."""

    reason: TerminationReason
    duration: float


def signal_name(signum: int) -> str:
    try:
        return signal_module.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def shell_exit_code(returncode: int) -> int:
    """``Popen.returncode`` as a shell reports it: 128+N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


def child_exit_code(returncode: int) -> int:
    """The runner's exit code for the command's own failure: as a shell, 75 remapped."""
    code = shell_exit_code(returncode)
    return EXIT_REMAPPED_RETRY if code == EXIT_RETRY else code


def exit_code_for(reason: TerminationReason, child_returncode: int | None) -> int:
    """The exit code for a reason before the retry budget is applied."""
    policy = REASON_POLICY[reason]
    if policy.exit_code is not None:
        return policy.exit_code
    if policy.retryable:
        return EXIT_RETRY
    if child_returncode is None:
        raise ValueError(f"{reason.value} needs the child's return code")
    return child_exit_code(child_returncode)


def node_exit_code(own: int, decision_code: int | None) -> int:
    """What one node of a multi-node job exits with: the job's one decision's code.

    SkyPilot reads the nodes' codes two ways: on Slurm one ``srun --kill-on-bad-exit``
    reports the highest code of all nodes (measured: 1 and 75 give 75, 75 and 125 give
    125); on Ray the first non-zero code wins. Only when every node that failed exits
    with the decision's code do both read the decision. A node that ended well exits
    0 (it lowers nothing, and it is not first among non-zero codes); without a
    decision (every node well, or the head unreachable) a node's own code stands.
    """
    if decision_code is None or own == EXIT_SUCCESS:
        return own
    return decision_code


def _describe_child(returncode: int) -> str:
    if returncode < 0:
        return f"command killed by {signal_name(-returncode)}"
    if returncode == EXIT_RETRY:
        return f"command exited {EXIT_RETRY} (remapped to {EXIT_REMAPPED_RETRY})"
    return f"command exited {returncode}"


def _initial(outcome: Outcome) -> tuple[TerminationReason, str, str]:
    """Reason, detail and monitor before the retry policy: signal > monitor > child."""
    if outcome.runner_signal is not None:
        return (
            TerminationReason.SIGNALLED,
            f"runner received {signal_name(outcome.runner_signal)}",
            "",
        )
    if outcome.verdict is not None:
        return outcome.verdict.reason, outcome.verdict.detail, outcome.verdict.monitor
    if outcome.child_returncode is None:
        raise ValueError("an outcome needs a child return code, a verdict or a signal")
    if outcome.child_returncode == 0:
        return TerminationReason.COMPLETED, "command exited 0", ""
    described = _describe_child(outcome.child_returncode)
    if outcome.explanation is not None:
        # A fatal line in the log says why the command died: a GPU or NCCL fault
        # is the node's problem, worth a retry, not the code's.
        return (
            outcome.explanation.reason,
            f"{described}; {outcome.explanation.detail}",
            outcome.explanation.monitor,
        )
    return TerminationReason.JOB_FAILED, described, ""


def _crash_loop(
    reason: TerminationReason,
    duration: float,
    history: Sequence[AttemptSummary],
    policy: RetryPolicy,
) -> str | None:
    """Why retrying would not help, or None."""
    budget_spent = sum(
        1 for past in history if past.reason.retryable and past.reason.counts_against_budget
    )
    if reason.counts_against_budget and budget_spent >= policy.max_retries:
        return (
            f"retry budget spent: {budget_spent} retryable ends "
            f"(--max-retries {policy.max_retries})"
        )
    if policy.crash_loop_window <= 0 or policy.crash_loop_count <= 0:
        return None
    recent = [*history, AttemptSummary(reason, duration)][-policy.crash_loop_count :]
    if len(recent) < policy.crash_loop_count:
        return None
    if all(
        past.reason.counts_against_budget and past.duration < policy.crash_loop_window
        for past in recent
    ):
        return (
            f"crash loop: {policy.crash_loop_count} ends in a row each shorter than "
            f"{policy.crash_loop_window:g}s"
        )
    return None


def decide(
    outcome: Outcome,
    history: Sequence[AttemptSummary] = (),
    policy: RetryPolicy = RetryPolicy(),
) -> Decision:
    """The one place that turns an outcome into a reason and an exit code.

    ``history`` holds the earlier attempts of the same task, oldest first.
    """
    reason, detail, monitor = _initial(outcome)
    imposed = outcome.verdict.exit_code if outcome.verdict and not outcome.runner_signal else None
    if imposed is not None and imposed != EXIT_RETRY:
        return Decision(reason, imposed, detail, monitor)
    if reason.retryable:
        why_not = _crash_loop(reason, outcome.duration, history, policy)
        if why_not is not None:
            return Decision(
                TerminationReason.CRASH_LOOP,
                EXIT_CRASH_LOOP,
                f"{why_not}; last end: {reason.value}: {detail}",
                monitor,
            )
    return Decision(reason, exit_code_for(reason, outcome.child_returncode), detail, monitor)


class Announcer(str, Enum):
    """Who announces an attempt's end (``devops/skypilot/common/lifecycle.py`` decides)."""

    RUNNER = "runner"
    #: SkyPilot's jobs controller, through ``skyguard notify-event``.
    CONTROLLER = "controller"


@dataclass(frozen=True)
class Termination:
    """The record of one attempt, written to ``<state-dir>/termination.json``."""

    reason: TerminationReason
    exit_code: int
    #: The command's own exit code as a shell reports it (128+N for signal N), or None.
    child_exit_code: int | None
    #: Signal name that ended the command (ours or its own), or None.
    signal: str | None
    detail: str
    monitor: str
    attempt: int
    #: Wall-clock timestamps (ISO 8601, UTC) for people; durations use a monotonic clock.
    started_at: str
    ended_at: str
    duration: float
    node_rank: int
    task_id: str
    #: Where a hung job's processes were, captured before the stop; None otherwise
    #: (and in records written before forensics existed).
    forensics: Forensics | None = None
    #: Records written before the jobs controller announced anything say nothing: the runner.
    announced_by: Announcer = Announcer.RUNNER

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["reason"] = self.reason.value
        data["announced_by"] = self.announced_by.value
        data["forensics"] = self.forensics.to_json() if self.forensics else None
        return data

    @classmethod
    def from_json(cls, data: Any) -> Termination:
        """Build a record from JSON, every field checked; ValueError names a bad one."""
        values = checked(data, RECORD_FIELDS, OPTIONAL_FIELDS)
        values["reason"] = TerminationReason(values["reason"])
        values["announced_by"] = Announcer(values.get("announced_by", Announcer.RUNNER))
        values["duration"] = float(values["duration"])
        raw = values.get("forensics")
        try:
            values["forensics"] = None if raw is None else Forensics.from_json(raw)
        except ValueError as error:
            raise ValueError(f"forensics: {error}") from None
        return cls(**values)

    def summary(self) -> AttemptSummary:
        return AttemptSummary(self.reason, self.duration)


#: What each field of a :class:`Termination` must be when read back from JSON.
RECORD_FIELDS: Mapping[str, fields.Kind] = {
    "reason": fields.one_of(reason.value for reason in TerminationReason),
    "exit_code": fields.EXIT_CODE,
    "child_exit_code": fields.optional(fields.EXIT_CODE),
    "signal": fields.optional(fields.TEXT),
    "detail": fields.TEXT,
    "monitor": fields.TEXT,
    "attempt": fields.ATTEMPT,
    "started_at": fields.TEXT,
    "ended_at": fields.TEXT,
    "duration": fields.SECONDS,
    "node_rank": fields.COUNT,
    "task_id": fields.TEXT,
}
#: Fields a record may lack (written before they existed).
OPTIONAL_FIELDS: Mapping[str, fields.Kind] = {
    "forensics": fields.optional(fields.OBJECT),
    "announced_by": fields.one_of(who.value for who in Announcer),
}

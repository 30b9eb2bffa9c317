"""Which managed-job status changes are news, and who tells them: data tables.

SkyPilot 0.14.1 runs a task's ``event_callback`` on the jobs controller at every
status change of a managed job, with ``JOB_STATUS`` one of ``SUBMITTED``,
``STARTING``, ``STARTED``, ``RECOVERING``, ``RECOVERED``, ``SUCCEEDED``, ``FAILED``,
``CANCELLING``, ``CANCELLED`` (``sky/jobs/state.py``). Every failure arrives as
``FAILED``; the kind (``FAILED_SETUP``, ``FAILED_NO_RESOURCE``, ...) is read from the
controller's record of the job. The runner on the head node reports the ends it
sees itself; the callback adds the ones it cannot see, and backs the runner up
where it can read the runner's state dir (the sent-log then keeps it to one message).
"""

from __future__ import annotations

from dataclasses import dataclass

from devops.skypilot.common.lifecycle import Phase, phase_for
from devops.skypilot.common.termination import Announcer, Termination
from devops.skypilot.common.termination import TerminationReason as R


@dataclass(frozen=True)
class StatusRule:
    """What a status means to the people watching the job."""

    phase: Phase
    reason: R
    #: Send even when the runner's state dir is not visible from the controller (a
    #: bucket only the nodes mount): the node could not have said it. False for ends
    #: the runner itself reports (it decided them), which the controller then leaves
    #: to it, rather than risk saying them twice.
    when_state_hidden: bool
    detail: str


#: RECOVERING caused by the job's exit code, as told apart by the controller's record.
RECOVERING_ON_EXIT = "RECOVERING_ON_EXIT_CODE"

#: JOB_STATUS, or the failure kind the controller recorded -> the rule; None: no news
#: (a start is the runner's to tell: it sets the commit status pending).
STATUS_RULES: dict[str, StatusRule | None] = {
    "SUBMITTED": None,
    "STARTING": None,
    "STARTED": None,
    "RECOVERED": None,
    "CANCELLING": None,
    "SUCCEEDED": StatusRule(
        Phase.SUCCEEDED, R.COMPLETED, False, "SkyPilot reports the job SUCCEEDED"
    ),
    "FAILED": StatusRule(
        Phase.FAILED, R.JOB_FAILED, False, "SkyPilot reports the job FAILED (exit code)"
    ),
    "FAILED_SETUP": StatusRule(
        Phase.FAILED, R.SETUP_FAILED, True, "the task's setup failed; the job never ran"
    ),
    "FAILED_PRECHECKS": StatusRule(
        Phase.FAILED, R.LAUNCH_FAILED, True, "SkyPilot's prechecks failed; no cluster was launched"
    ),
    "FAILED_NO_RESOURCE": StatusRule(
        Phase.FAILED, R.LAUNCH_FAILED, True, "no resources anywhere: the cluster never came up"
    ),
    "FAILED_CONTROLLER": StatusRule(
        Phase.FAILED, R.CONTROLLER_FAILED, True, "SkyPilot's jobs controller failed"
    ),
    "CANCELLED": StatusRule(
        Phase.CANCELLED, R.SIGNALLED, True, "cancelled (sky jobs cancel); the cluster is torn down"
    ),
    "RECOVERING": StatusRule(
        Phase.RETRYING,
        R.NODE_LOST,
        True,
        "SkyPilot is recovering the job: its node was lost (preemption, a failed node)",
    ),
    # RECOVERING that SkyPilot's record puts down to the job's own exit code
    # (recover_on_exit_codes: the runner's 75). The runner announced that retry before
    # it exited; the controller only backs it up where it can check the runner's record.
    RECOVERING_ON_EXIT: StatusRule(
        Phase.RETRYING,
        R.NODE_LOST,
        False,
        "SkyPilot is restarting the job on its exit code (recover_on_exit_codes)",
    ),
}


@dataclass(frozen=True)
class StateView:
    """What the controller can see of the head node's state dir."""

    visible: bool
    #: The runner's newest recorded end (``termination.json``), if any.
    last: Termination | None = None
    #: An attempt started and never recorded its end (``attempt.json`` is left):
    #: its node went away under it.
    unrecorded: bool = False


@dataclass(frozen=True)
class Told:
    """The end to announce."""

    phase: Phase
    reason: R
    detail: str
    exit_code: int | None = None
    attempt: int = 1


def what_to_tell(rule: StatusRule, view: StateView) -> Told | str:
    """The end to announce, or why the controller stays quiet (one line)."""
    attempt = (view.last.attempt if view.last else 0) + (1 if view.unrecorded else 0)
    told = Told(rule.phase, rule.reason, rule.detail, attempt=max(1, attempt))
    if not view.visible:
        if rule.when_state_hidden:
            return told
        return (
            f"{rule.phase.value}: the runner reports this end itself, and its state dir "
            "is not visible here to check"
        )
    last = view.last
    if view.unrecorded or last is None:
        return told
    if last.announced_by is Announcer.CONTROLLER:
        # The runner recorded a signal and left its announcement to us: SkyPilot's status
        # says what the signal was (a cancel, or a preemption it is recovering from).
        detail = f"{rule.detail}; the runner: {last.detail}"
        return Told(rule.phase, last.reason, detail, last.exit_code, last.attempt)
    if phase_for(last) is rule.phase:
        # The runner recorded this end: use its words, so the sent-log finds its
        # message (sent: nothing more) or its failure (sent now, as a backup).
        return Told(rule.phase, last.reason, last.detail, last.exit_code, last.attempt)
    return told

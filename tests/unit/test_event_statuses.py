"""The managed-job status table of ``skyguard notify-event`` and who speaks for each end."""

from __future__ import annotations

import dataclasses

import pytest

from devops.skypilot.common.lifecycle import Phase, phase_for
from devops.skypilot.common.termination import Termination, exit_code_for
from devops.skypilot.common.termination import TerminationReason as R
from devops.skypilot.controller.event import ATTEMPT_FILE
from devops.skypilot.controller.statuses import (
    STATUS_RULES,
    StateView,
    StatusRule,
    Told,
    what_to_tell,
)
from devops.skypilot.node.state import ATTEMPT_FILE as RUNNERS_ATTEMPT_FILE
from notifications.orchestrator import CONTROLLER_CHANNELS, ROUTES, route

#: (JOB_STATUS or recorded failure kind) -> (phase, reason, sent when the state is hidden)
EXPECTED = {
    "SUBMITTED": None,
    "STARTING": None,
    "STARTED": None,
    "RECOVERED": None,
    "CANCELLING": None,
    "SUCCEEDED": (Phase.SUCCEEDED, R.COMPLETED, False),
    "FAILED": (Phase.FAILED, R.JOB_FAILED, False),
    "FAILED_SETUP": (Phase.FAILED, R.SETUP_FAILED, True),
    "FAILED_PRECHECKS": (Phase.FAILED, R.LAUNCH_FAILED, True),
    "FAILED_NO_RESOURCE": (Phase.FAILED, R.LAUNCH_FAILED, True),
    "FAILED_CONTROLLER": (Phase.FAILED, R.CONTROLLER_FAILED, True),
    "CANCELLED": (Phase.CANCELLED, R.SIGNALLED, True),
    "RECOVERING": (Phase.RETRYING, R.NODE_LOST, True),
    "RECOVERING_ON_EXIT_CODE": (Phase.RETRYING, R.NODE_LOST, False),
}


def record(reason: R, attempt: int = 1) -> Termination:
    return Termination(
        reason=reason,
        exit_code=exit_code_for(reason, 1),
        child_exit_code=1,
        signal=None,
        detail=f"runner: {reason.value}",
        monitor="",
        attempt=attempt,
        started_at="",
        ended_at="",
        duration=1.0,
        node_rank=0,
        task_id="t",
    )


@pytest.mark.parametrize("status", sorted(EXPECTED))
def test_status_table(status: str) -> None:
    rule = STATUS_RULES[status]
    got = None if rule is None else (rule.phase, rule.reason, rule.when_state_hidden)
    assert got == EXPECTED[status]


def test_the_table_is_exactly_the_expected_statuses() -> None:
    assert set(STATUS_RULES) == set(EXPECTED)


def test_every_status_skypilot_calls_back_with_or_records_is_in_the_table() -> None:
    from sky.jobs.state import ManagedJobStatus

    # sky/jobs/state.py calls back with these words; failures are refined by kind.
    called = {"SUBMITTED", "STARTING", "STARTED", "RECOVERING", "RECOVERED", "SUCCEEDED"}
    called |= {"FAILED", "CANCELLING", "CANCELLED"}
    kinds = {s.value for s in ManagedJobStatus.failure_statuses()}
    assert called | kinds <= set(STATUS_RULES)


def test_the_restart_on_exit_code_event_is_skypilots() -> None:
    from sky.jobs.state import USER_JOB_FAILURE_EVENT_CODE

    from devops.skypilot.controller.skypilot_record import RESTART_ON_EXIT_CODE

    assert RESTART_ON_EXIT_CODE == USER_JOB_FAILURE_EVENT_CODE


@pytest.mark.parametrize("status", sorted(s for s, r in EXPECTED.items() if r))
def test_every_rule_is_routed_and_consistent_with_the_runners_phases(status: str) -> None:
    rule = STATUS_RULES[status]
    assert rule is not None
    assert (rule.phase, rule.reason) in ROUTES
    _, channels = route(rule.phase, rule.reason)
    assert set(CONTROLLER_CHANNELS) <= channels
    # The same reason decided by a runner would be told in the same phase.
    assert phase_for(record(rule.reason)) is rule.phase


def test_the_runners_checkpoint_file_is_the_one_the_controller_looks_for() -> None:
    assert ATTEMPT_FILE == RUNNERS_ATTEMPT_FILE


def rule(status: str) -> StatusRule:
    found = STATUS_RULES[status]
    assert found is not None
    return found


def test_hidden_state_the_runners_ends_are_left_to_it() -> None:
    for status in ("SUCCEEDED", "FAILED"):
        assert isinstance(what_to_tell(rule(status), StateView(visible=False)), str)


def test_hidden_state_the_ends_no_node_can_report_are_told() -> None:
    told = what_to_tell(rule("CANCELLED"), StateView(visible=False))
    assert told == Told(Phase.CANCELLED, R.SIGNALLED, rule("CANCELLED").detail)


def test_visible_state_uses_the_runners_words_for_the_same_phase() -> None:
    """So the dedup key is the runner's: its message, if sent, is not repeated."""
    view = StateView(visible=True, last=record(R.CRASH_LOOP, attempt=3))
    told = what_to_tell(rule("FAILED"), view)
    assert isinstance(told, Told)
    assert (told.phase, told.reason, told.attempt) == (Phase.FAILED, R.CRASH_LOOP, 3)
    assert told.detail == "runner: crash_loop" and told.exit_code == 125
    retry = what_to_tell(rule("RECOVERING"), StateView(True, record(R.HEARTBEAT_TIMEOUT)))
    assert isinstance(retry, Told) and retry.reason is R.HEARTBEAT_TIMEOUT


def test_visible_state_an_attempt_without_a_record_is_the_controllers_to_tell() -> None:
    view = StateView(visible=True, last=record(R.HEARTBEAT_TIMEOUT, attempt=1), unrecorded=True)
    told = what_to_tell(rule("RECOVERING"), view)
    assert isinstance(told, Told)
    assert (told.reason, told.attempt) == (R.NODE_LOST, 2)
    # A runner killed outright (OOM) leaves its checkpoint: SkyPilot says FAILED.
    failed = what_to_tell(rule("FAILED"), dataclasses.replace(view, last=None))
    assert isinstance(failed, Told) and failed.reason is R.JOB_FAILED


def test_visible_state_a_record_of_another_phase_does_not_speak_for_this_one() -> None:
    view = StateView(visible=True, last=record(R.SIGNALLED))
    told = what_to_tell(rule("RECOVERING"), view)
    assert isinstance(told, Told) and told.reason is R.NODE_LOST

"""The decision table: outcome (+ history) -> reason and exit code."""

from __future__ import annotations

import signal

import pytest

from devops.skypilot.common.termination import (
    EXIT_CONFIG_ERROR,
    EXIT_CRASH_LOOP,
    EXIT_MAX_RUNTIME,
    EXIT_RETRY,
    REASON_POLICY,
    AttemptSummary,
    Outcome,
    RetryPolicy,
    Termination,
    TerminationReason,
    Verdict,
    child_exit_code,
    decide,
    exit_code_for,
)

R = TerminationReason
HANG = Verdict(R.HEARTBEAT_TIMEOUT, "no heartbeat for 5.0s", "HeartbeatMonitor")
OOM = Verdict(R.CUDA_ERROR, "fatal log line: CUDA out of memory", "LogPatternMonitor")


@pytest.mark.parametrize(
    ("outcome", "reason", "code"),
    [
        (Outcome(0), R.COMPLETED, 0),
        (Outcome(1), R.JOB_FAILED, 1),
        (Outcome(3), R.JOB_FAILED, 3),
        (Outcome(EXIT_RETRY), R.JOB_FAILED, 1),  # the child's own 75 must not retry
        (Outcome(-signal.SIGKILL), R.JOB_FAILED, 137),
        (Outcome(-signal.SIGSEGV), R.JOB_FAILED, 139),
        (Outcome(-signal.SIGTERM, verdict=HANG), R.HEARTBEAT_TIMEOUT, EXIT_RETRY),
        (Outcome(None, verdict=HANG), R.HEARTBEAT_TIMEOUT, EXIT_RETRY),
        (Outcome(1, explanation=OOM), R.CUDA_ERROR, EXIT_RETRY),
        (Outcome(0, explanation=OOM), R.COMPLETED, 0),  # success wins over a scary line
        (Outcome(-15, runner_signal=signal.SIGTERM), R.SIGNALLED, EXIT_RETRY),
        (Outcome(-15, verdict=HANG, runner_signal=signal.SIGINT), R.SIGNALLED, EXIT_RETRY),
        (Outcome(None, Verdict(R.MAX_RUNTIME_REACHED, "spent")), R.MAX_RUNTIME_REACHED, 124),
        (Outcome(None, Verdict(R.NCCL_ERROR, "allreduce")), R.NCCL_ERROR, EXIT_RETRY),
        (Outcome(None, Verdict(R.PEER_FAILED, "node 1")), R.PEER_FAILED, EXIT_RETRY),
    ],
)
def test_decide_table(outcome: Outcome, reason: TerminationReason, code: int) -> None:
    decision = decide(outcome)
    assert (decision.reason, decision.exit_code) == (reason, code)


def test_detail_names_the_signal_and_the_monitor() -> None:
    assert "SIGSEGV" in decide(Outcome(-signal.SIGSEGV)).detail
    assert decide(Outcome(-15, verdict=HANG)).monitor == "HeartbeatMonitor"
    explained = decide(Outcome(1, explanation=OOM))
    assert "command exited 1" in explained.detail and "CUDA out of memory" in explained.detail


def test_outcome_without_any_end_is_rejected() -> None:
    with pytest.raises(ValueError):
        decide(Outcome(None))


def test_every_reason_has_a_policy_and_a_code() -> None:
    assert set(REASON_POLICY) == set(TerminationReason)
    for reason in TerminationReason:
        code = exit_code_for(reason, 7)
        assert (code == EXIT_RETRY) == reason.retryable


def test_exit_codes_are_pinned() -> None:
    """Recipes and users depend on these numbers: changing one is a breaking change."""
    assert (EXIT_RETRY, EXIT_CONFIG_ERROR, EXIT_MAX_RUNTIME, EXIT_CRASH_LOOP) == (75, 2, 124, 125)
    assert child_exit_code(-9) == 137 and child_exit_code(75) == 1 and child_exit_code(4) == 4


def summaries(*items: tuple[TerminationReason, float]) -> list[AttemptSummary]:
    return [AttemptSummary(reason, duration) for reason, duration in items]


LONG = 3600.0


@pytest.mark.parametrize(
    ("history", "policy", "outcome", "reason"),
    [
        # Budget: 3 retryable ends allowed, the 4th gives up.
        (
            summaries((R.HEARTBEAT_TIMEOUT, LONG)) * 2,
            RetryPolicy(3),
            Outcome(None, HANG),
            R.HEARTBEAT_TIMEOUT,
        ),
        (
            summaries((R.HEARTBEAT_TIMEOUT, LONG)) * 3,
            RetryPolicy(3),
            Outcome(None, HANG),
            R.CRASH_LOOP,
        ),
        (summaries((R.NCCL_ERROR, LONG)) * 1, RetryPolicy(1), Outcome(None, HANG), R.CRASH_LOOP),
        (summaries((R.HEARTBEAT_TIMEOUT, LONG)) * 5, RetryPolicy(0), Outcome(0), R.COMPLETED),
        # Cancels and preemptions are not the job's fault: they spend nothing.
        (
            summaries((R.SIGNALLED, LONG)) * 9,
            RetryPolicy(3),
            Outcome(None, HANG),
            R.HEARTBEAT_TIMEOUT,
        ),
        (
            summaries((R.HEARTBEAT_TIMEOUT, LONG)) * 9,
            RetryPolicy(3),
            Outcome(-15, runner_signal=15),
            R.SIGNALLED,
        ),
        # Final ends in the history do not spend the retry budget.
        (
            summaries((R.JOB_FAILED, LONG)) * 9,
            RetryPolicy(3),
            Outcome(None, HANG),
            R.HEARTBEAT_TIMEOUT,
        ),
        # Crash loop: 3 short failed ends in a row, the current one included.
        (
            summaries((R.JOB_FAILED, 5), (R.CUDA_ERROR, 5)),
            RetryPolicy(99, 3, 60),
            Outcome(1, explanation=OOM, duration=5),
            R.CRASH_LOOP,
        ),
        (
            summaries((R.JOB_FAILED, 5), (R.CUDA_ERROR, 500)),
            RetryPolicy(99, 3, 60),
            Outcome(1, explanation=OOM, duration=5),
            R.CUDA_ERROR,
        ),
        (
            summaries((R.CUDA_ERROR, 5)),
            RetryPolicy(99, 3, 60),
            Outcome(1, explanation=OOM, duration=5),
            R.CUDA_ERROR,
        ),
        (
            summaries((R.JOB_FAILED, 5), (R.CUDA_ERROR, 5)),
            RetryPolicy(99, 3, 0),
            Outcome(1, explanation=OOM, duration=5),
            R.CUDA_ERROR,
        ),
        (
            summaries((R.SIGNALLED, 5), (R.SIGNALLED, 5)),
            RetryPolicy(99, 3, 60),
            Outcome(None, HANG, duration=5),
            R.HEARTBEAT_TIMEOUT,
        ),
    ],
)
def test_retry_policy_table(
    history: list[AttemptSummary], policy: RetryPolicy, outcome: Outcome, reason: TerminationReason
) -> None:
    decision = decide(outcome, history, policy)
    assert decision.reason is reason
    if reason is R.CRASH_LOOP:
        assert decision.exit_code == EXIT_CRASH_LOOP
        assert "last end" in decision.detail


def test_termination_round_trips_through_json() -> None:
    record = Termination(
        reason=R.HEARTBEAT_TIMEOUT,
        exit_code=75,
        child_exit_code=143,
        signal="SIGTERM",
        detail="no heartbeat",
        monitor="HeartbeatMonitor",
        attempt=2,
        started_at="2026-01-01T00:00:00+00:00",
        ended_at="2026-01-01T00:01:00+00:00",
        duration=60.0,
        node_rank=0,
        task_id="sky-managed-x",
    )
    data = record.to_json()
    assert data["reason"] == "heartbeat_timeout"
    assert Termination.from_json(data) == record
    with pytest.raises(ValueError):
        Termination.from_json({**data, "reason": "nonsense"})
    with pytest.raises(ValueError):
        Termination.from_json({k: v for k, v in data.items() if k != "attempt"})


def test_every_record_field_is_checked_when_read_back() -> None:
    import dataclasses

    from devops.skypilot.common.termination import (
        OPTIONAL_FIELDS,
        RECORD_FIELDS,
        Announcer,
        Termination,
    )

    assert {*RECORD_FIELDS, *OPTIONAL_FIELDS} == {f.name for f in dataclasses.fields(Termination)}
    record = Termination(R.COMPLETED, 0, 0, None, "d", "", 1, "s", "e", 1.5, 0, "t")
    assert Termination.from_json(record.to_json()) == record
    assert Termination.from_json({**record.to_json(), "duration": 2}).duration == 2.0
    left = dataclasses.replace(record, announced_by=Announcer.CONTROLLER)
    assert Termination.from_json(left.to_json()) == left
    # A record written before the field existed: the runner announced it.
    older = {k: v for k, v in left.to_json().items() if k != "announced_by"}
    assert Termination.from_json(older).announced_by is Announcer.RUNNER
    with pytest.raises(ValueError, match="announced_by"):
        Termination.from_json({**record.to_json(), "announced_by": "nobody"})


def test_a_lost_record_spends_the_retry_budget() -> None:
    lost = summaries((R.RECORD_LOST, 0.0), (R.RECORD_LOST, 0.0))
    hang = Outcome(143, Verdict(R.HEARTBEAT_TIMEOUT, "hang"), duration=LONG)
    assert decide(hang, lost, RetryPolicy(max_retries=2, crash_loop_window=0)).exit_code == 125
    assert decide(hang, lost, RetryPolicy(max_retries=3, crash_loop_window=0)).exit_code == 75


def test_an_end_relaying_a_peers_signal_is_announced_as_that_signal() -> None:
    from devops.skypilot.common.lifecycle import announcer
    from devops.skypilot.common.termination import Announcer

    left = frozenset({R.SIGNALLED})
    relaying = Verdict(R.PEER_FAILED, "node 1 ended: signalled", relayed=R.SIGNALLED)
    assert announcer(R.PEER_FAILED, relaying, left) is Announcer.CONTROLLER
    assert announcer(R.PEER_FAILED, relaying, frozenset()) is Announcer.RUNNER
    # The peer decided something of its own (a hang): the head announces it.
    hang = Verdict(R.PEER_FAILED, "node 1 ended: hang", relayed=R.HEARTBEAT_TIMEOUT)
    assert announcer(R.PEER_FAILED, hang, left) is Announcer.RUNNER
    # The crash-loop guard overrode the relayed end: the runner's own decision.
    assert announcer(R.CRASH_LOOP, relaying, left) is Announcer.RUNNER
    assert announcer(R.SIGNALLED, None, left) is Announcer.CONTROLLER

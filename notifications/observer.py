"""Plugs notifications into the runner as a :class:`RunObserver`.

``on_start`` sets the commit status pending, in the background, so a slow
endpoint never delays the command's start; ``on_end`` waits for that (so the
final status cannot be overtaken by the pending one) and announces the phase
the attempt's :class:`Termination` puts the job in (retrying, succeeded,
failed, cancelled), unless the record leaves that to SkyPilot's jobs controller.
Both together stay within one notification deadline at the end, and neither
raises: a failed send is logged as failed and changes nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from devops.skypilot.common.lifecycle import JobContext, Phase, RunObserver, phase_for
from devops.skypilot.common.termination import Announcer, Termination
from notifications.config import NotificationConfig
from notifications.notifier import Delivery, Event
from notifications.orchestrator import CONTROLLER_CHANNELS, Orchestrator

logger = logging.getLogger(__name__)

#: Share of the deadline the start notification may use.
START_SHARE = 0.25


class NotificationObserver(RunObserver):
    def __init__(
        self, config: NotificationConfig, orchestrator: Orchestrator | None = None
    ) -> None:
        self.config = config
        self.orchestrator = orchestrator or config.orchestrator()
        #: What the last notification delivered, for the runner's log and for tests.
        self.last_deliveries: list[Delivery] = []
        self._starting: threading.Thread | None = None

    @classmethod
    def from_sources(
        cls, section: Mapping[str, Any] | None, env: Mapping[str, str]
    ) -> NotificationObserver:
        """Build from the ``[notifications]`` table and the environment; raises ConfigError."""
        return cls(NotificationConfig.from_sources(section, env))

    def event_for(
        self, ctx: JobContext, phase: Phase, termination: Termination | None = None
    ) -> Event:
        return Event(
            job_name=ctx.job_name,
            task_id=ctx.task_id,
            phase=phase,
            reason=termination.reason if termination else None,
            exit_code=termination.exit_code if termination else None,
            detail=termination.detail if termination else "",
            attempt=ctx.attempt,
            num_nodes=ctx.num_nodes,
            elapsed=termination.duration if termination else 0.0,
            links=self.config.links(ctx.job_name, ctx.task_id),
            run_id=self.config.wandb.run_id,
        )

    def on_start(self, ctx: JobContext) -> None:
        if not self.config.enabled:
            return
        self.orchestrator.warm_up(ctx.node_rank)
        # The start matters less than the end: it may use only a share of the
        # deadline, so a job that fails at once still has time to say so.
        start_deadline = time.monotonic() + self.orchestrator.deadline * START_SHARE
        starting = threading.Thread(
            target=self._notify,
            args=(ctx, Phase.STARTED, None, start_deadline),
            name="notify-started",
            daemon=True,
        )
        try:
            starting.start()
        except RuntimeError as exc:  # no thread to spare: skip the start, keep the job
            logger.warning("start notification skipped: %s", exc)
            return
        self._starting = starting

    def on_end(self, ctx: JobContext, termination: Termination) -> None:
        # One budget for the whole exit: waiting for a slow start notification
        # (only in jobs shorter than START_SHARE of the deadline) leaves less for
        # the end, never less than 1 - START_SHARE of it. The wait keeps a late
        # `pending` from overwriting the final GitHub status.
        deadline_at = time.monotonic() + self.orchestrator.deadline
        self.wait_started(deadline_at - time.monotonic())
        phase = phase_for(termination)
        leave: frozenset[str] = frozenset()
        if termination.announced_by is Announcer.CONTROLLER:
            # Its record says so: SkyPilot's jobs controller knows whether the signal was
            # a cancel or a preemption, and says it once (skyguard notify-event) on its
            # channels; W&B, which it does not serve, is still told from here.
            leave = CONTROLLER_CHANNELS
            if self.config.enabled:
                logger.info(
                    "skyguard: %s/%s: announcement left to SkyPilot's jobs controller (%s)",
                    phase.value,
                    termination.reason.value,
                    ", ".join(sorted(leave)),
                )
        self._notify(ctx, phase, termination, deadline_at, leave)

    def wait_started(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for the start notification to finish."""
        starting = self._starting
        if starting is not None:
            starting.join(max(0.0, timeout))

    def _notify(
        self,
        ctx: JobContext,
        phase: Phase,
        termination: Termination | None,
        deadline_at: float | None,
        leave: frozenset[str] = frozenset(),
    ) -> None:
        self.last_deliveries = []
        if not self.config.enabled:
            return
        try:
            event = self.event_for(ctx, phase, termination)
            self.last_deliveries = self.orchestrator.notify(
                event,
                node_rank=ctx.node_rank,
                state_dir=ctx.state_dir,
                deadline_at=deadline_at,
                leave=leave,
            )
        except Exception as exc:  # notifications must never hurt the job
            logger.warning(
                "notification for %s failed: %s",
                phase.value,
                self.orchestrator.redactor(f"{type(exc).__name__}: {exc}"),
            )

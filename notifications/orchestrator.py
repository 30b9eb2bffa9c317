"""Who hears about what, and the guarantees around sending.

Routing is two tables: (phase, reason) -> :class:`Level`, then level -> channels.
Sending is concurrent with one total deadline, so a dead endpoint costs at most
the deadline however many tries and timeouts are configured. Only transient
failures (connection errors, 5xx, 429) are retried, with exponential backoff
and jitter, or exactly the ``retry_after`` a rate limit asks for. What was sent
is remembered per (task id, phase, reason, channel) in
``<state-dir>/notifications.json``, so a restarted runner never sends it again;
a channel whose endpoint is gone (a deleted webhook) is not used again for the task.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt
from tenacity.stop import stop_base

from devops.skypilot.common.lifecycle import Phase
from devops.skypilot.common.termination import TerminationReason as R
from notifications.notifier import Delivery, DeliveryStatus, Event, Level, Notifier
from notifications.secrets import Redactor, protect_secrets
from notifications.sentlog import DedupKey, SentLog

logger = logging.getLogger(__name__)
#: A channel nobody configured is not news: skipped sends only show with debug logging.
_LOG_LEVELS = {
    DeliveryStatus.SENT: logging.INFO,
    DeliveryStatus.SKIPPED: logging.DEBUG,
    DeliveryStatus.FAILED: logging.WARNING,
}

DEFAULT_DEADLINE = 20.0

#: How loud each way a job can be is. The keys are every (phase, reason) pair
#: :func:`devops.skypilot.common.lifecycle.phase_for` produces; a test keeps it complete.
ROUTES: Mapping[tuple[Phase, R | None], Level] = {
    (Phase.STARTED, None): Level.STATUS,
    (Phase.SUCCEEDED, R.COMPLETED): Level.INFO,
    # Cancel and preemption look the same to the runner; neither is the job's fault.
    (Phase.CANCELLED, R.SIGNALLED): Level.WARNING,
    (Phase.RETRYING, R.HEARTBEAT_TIMEOUT): Level.WARNING,
    (Phase.RETRYING, R.HEARTBEAT_UNREADABLE): Level.WARNING,
    (Phase.RETRYING, R.NCCL_ERROR): Level.WARNING,
    (Phase.RETRYING, R.CUDA_ERROR): Level.WARNING,
    (Phase.RETRYING, R.PEER_FAILED): Level.WARNING,
    # Only ever in a history (an attempt whose record was lost), never an end to tell.
    (Phase.RETRYING, R.RECORD_LOST): Level.WARNING,
    (Phase.FAILED, R.JOB_FAILED): Level.ERROR,
    (Phase.FAILED, R.MAX_RUNTIME_REACHED): Level.ERROR,
    (Phase.FAILED, R.CRASH_LOOP): Level.ERROR,
    (Phase.FAILED, R.CONFIG_ERROR): Level.ERROR,
    # Ends only the jobs controller sees (``skyguard notify-event``).
    (Phase.RETRYING, R.NODE_LOST): Level.WARNING,
    (Phase.FAILED, R.SETUP_FAILED): Level.ERROR,
    (Phase.FAILED, R.LAUNCH_FAILED): Level.ERROR,
    (Phase.FAILED, R.CONTROLLER_FAILED): Level.ERROR,
}

#: For pairs ``phase_for`` never makes (a hand-built record): loud rather than silent.
PHASE_LEVELS: Mapping[Phase, Level] = {
    Phase.STARTED: Level.STATUS,
    Phase.RETRYING: Level.WARNING,
    Phase.SUCCEEDED: Level.INFO,
    Phase.FAILED: Level.ERROR,
    Phase.CANCELLED: Level.WARNING,
}

#: A start only sets the commit status pending: restarts must not spam the chat.
LEVEL_CHANNELS: Mapping[Level, frozenset[str]] = {
    Level.STATUS: frozenset({"github"}),
    Level.INFO: frozenset({"github", "discord", "slack", "wandb"}),
    Level.WARNING: frozenset({"github", "discord", "slack", "wandb"}),
    Level.ERROR: frozenset({"github", "discord", "slack", "wandb"}),
}

#: The channels SkyPilot's jobs controller sends on (``skyguard notify-event``). W&B
#: stays with the node: the run's files are there, and the controller lacks wandb.
CONTROLLER_CHANNELS: frozenset[str] = frozenset({"discord", "slack", "github"})


def route(
    phase: Phase,
    reason: R | None,
    routes: Mapping[tuple[Phase, R | None], Level] = ROUTES,
    level_channels: Mapping[Level, frozenset[str]] = LEVEL_CHANNELS,
) -> tuple[Level, frozenset[str]]:
    level = routes.get((phase, reason), PHASE_LEVELS[phase])
    return level, level_channels[level]


@dataclass(frozen=True)
class RetrySettings:
    """Tries per channel and the backoff between them (before jitter, seconds)."""

    tries: int = 3
    initial: float = 0.5
    maximum: float = 8.0
    jitter: float = 0.5


class _Backoff:
    """Wait ``retry_after`` when the server named it, else exponential backoff + jitter."""

    def __init__(self, settings: RetrySettings) -> None:
        self.settings = settings

    def __call__(self, state: RetryCallState) -> float:
        last = state.outcome.result() if state.outcome is not None else None
        if isinstance(last, Delivery) and last.retry_after is not None:
            return float(last.retry_after)
        s = self.settings
        exponential = min(s.maximum, s.initial * 2.0 ** (state.attempt_number - 1))
        return exponential + random.uniform(0, s.jitter)


class _StopAtDeadline(stop_base):
    """Give up when the next try could not start before the deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, state: RetryCallState) -> bool:
        # tenacity >= 8.3 computes the wait before asking stop; older ones do not
        # (then a try that starts too late fails fast on its own).
        upcoming = float(getattr(state, "upcoming_sleep", 0.0))
        return time.monotonic() + upcoming >= self.deadline


def _is_transient(delivery: Delivery) -> bool:
    return delivery.transient


class Orchestrator:
    """Routes an event, sends it on every channel at once, within one deadline."""

    def __init__(
        self,
        notifiers: Sequence[Notifier],
        *,
        deadline: float = DEFAULT_DEADLINE,
        retry: RetrySettings = RetrySettings(),
        routes: Mapping[tuple[Phase, R | None], Level] = ROUTES,
        level_channels: Mapping[Level, frozenset[str]] = LEVEL_CHANNELS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.notifiers = list(notifiers)
        self.deadline = deadline
        self.retry = retry
        self.routes = routes
        self.level_channels = level_channels
        self._sleep = sleep
        #: task id -> channel -> why its endpoint is gone (also kept in the state dir).
        self._gone: dict[str, dict[str, str]] = {}
        self.redactor = Redactor(s for n in self.notifiers for s in n.secrets())
        protect_secrets(self.redactor)

    def warm_up(self, node_rank: int = 0) -> None:
        """Let channels load what they need while the job runs (only where they will send)."""
        if node_rank != 0:
            return
        for notifier in self.notifiers:
            try:
                notifier.warm_up()
            except Exception as exc:  # an optimisation must never cost the job
                logger.debug("%s warm-up failed: %s", notifier.name, type(exc).__name__)

    def notify(
        self,
        event: Event,
        *,
        node_rank: int = 0,
        state_dir: Path | None = None,
        deadline_at: float | None = None,
        leave: frozenset[str] = frozenset(),
    ) -> list[Delivery]:
        """Route, deduplicate and send ``event``; one delivery per routed channel.

        ``deadline_at`` (monotonic) overrides ``now + deadline`` when the caller
        already spent part of its budget; ``leave`` names channels another sender
        announces this event on (the jobs controller).
        """
        level, channels = route(event.phase, event.reason, self.routes, self.level_channels)
        targets = [n for n in self.notifiers if n.name in channels - leave]
        if node_rank != 0:
            # Every node sees the same end; the head node speaks for the job.
            return [
                Delivery.skipped(n.name, f"node rank {node_rank}: rank 0 sends") for n in targets
            ]
        deadline = time.monotonic() + self.deadline if deadline_at is None else deadline_at
        if state_dir is None:
            return self._notify(event, level, targets, None, deadline)
        log = SentLog(state_dir)
        # Another sender (the jobs controller, see sentlog) may be announcing the same end.
        with log.claim(deadline):
            return self._notify(event, level, targets, log, deadline)

    def _notify(
        self,
        event: Event,
        level: Level,
        targets: Sequence[Notifier],
        log: SentLog | None,
        deadline_at: float,
    ) -> list[Delivery]:
        key = DedupKey(event.task_id, event.phase, event.reason)
        already = log.sent(key) if log is not None else frozenset()
        gone = {**(log.gone(event.task_id) if log is not None else {})}
        gone.update(self._gone.get(event.task_id, {}))
        skipped = [
            Delivery.skipped(n.name, "already sent for this task")
            if n.name in already
            else Delivery.skipped(n.name, f"not used again in this task: {gone[n.name]}")
            for n in targets
            if n.name in already or n.name in gone
        ]
        deliveries = self.deliver(
            replace(event, level=level),
            [n for n in targets if n.name not in already and n.name not in gone],
            deadline_at=deadline_at,
        )
        self._remember(event.task_id, key, deliveries, log)
        return skipped + deliveries

    def _remember(
        self, task_id: str, key: DedupKey, deliveries: Sequence[Delivery], log: SentLog | None
    ) -> None:
        sent = [d.channel for d in deliveries if d.ok]
        gone = {d.channel: d.detail for d in deliveries if d.gone}
        self._gone.setdefault(task_id, {}).update(gone)
        if log is None:
            return
        try:
            if sent:
                log.record(key, sent)
            if gone:
                log.record_gone(task_id, gone)
        except OSError as exc:
            logger.warning("could not remember sent notifications in %s: %s", log.path, exc)

    def deliver(
        self,
        event: Event,
        notifiers: Sequence[Notifier] | None = None,
        *,
        deadline_at: float | None = None,
        log: bool = True,
    ) -> list[Delivery]:
        """Send ``event`` on ``notifiers`` (default all) concurrently; no routing, no dedup.

        ``log=False`` when the caller reports the deliveries itself (``notify --test``).
        """
        chosen = self.notifiers if notifiers is None else list(notifiers)
        began = time.monotonic()
        deadline = began + self.deadline if deadline_at is None else deadline_at
        # Text from the job's log may quote a credential another channel holds.
        event = replace(event, detail=self.redactor(event.detail))
        results: dict[str, Delivery] = {}
        lock = threading.Lock()

        def work(notifier: Notifier) -> None:
            delivery = self._with_retries(notifier, event, deadline)
            with lock:
                results[notifier.name] = delivery

        # Daemon threads: a send stuck past the deadline must not hold up the runner's exit.
        threads = [
            threading.Thread(target=work, args=(n,), name=f"notify-{n.name}", daemon=True)
            for n in chosen
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with lock:
            deliveries = [
                results.get(n.name)
                or Delivery.failed(
                    n.name, f"no answer within the {max(0.0, deadline - began):.3g}s deadline"
                )
                for n in chosen
            ]
        if log:
            for delivery in deliveries:
                self._log(event, delivery)
        return deliveries

    def _with_retries(self, notifier: Notifier, event: Event, deadline: float) -> Delivery:
        tries = 0

        def attempt() -> Delivery:
            nonlocal tries
            tries += 1
            return notifier.send(event, deadline=deadline)

        retrying = Retrying(
            stop=stop_after_attempt(self.retry.tries) | _StopAtDeadline(deadline),
            wait=_Backoff(self.retry),
            retry=retry_if_result(_is_transient),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            sleep=self._sleep,
        )
        try:
            delivery: Delivery | None = retrying(attempt)
        except Exception as exc:  # tenacity itself failing must not reach the runner
            delivery = Delivery.failed(notifier.name, f"retry loop failed: {type(exc).__name__}")
        if delivery is None:
            delivery = Delivery.failed(notifier.name, "no result")
        if delivery.transient and tries < self.retry.tries:
            wait = delivery.retry_after
            if wait is not None and time.monotonic() + wait >= deadline:
                why = f"the server asked to wait {wait:.3g}s, past the deadline"
            else:
                why = "no time left for another try"
            delivery = replace(delivery, detail=f"{delivery.detail}; {why}")
        return replace(delivery, attempts=tries if delivery.attempts else 0)

    def _log(self, event: Event, delivery: Delivery) -> None:
        what = f"{event.phase.value}/{event.reason.value if event.reason else '-'}"
        level = _LOG_LEVELS[delivery.status]
        logger.log(level, "notification %s: %s", what, delivery.line())

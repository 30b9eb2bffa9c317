"""The runner: wraps the training command on one node and decides how it ended.

``skyguard run [options] -- CMD ARGS...`` builds one (:mod:`devops.skypilot.node.main`).

One attempt, in order: load the task's history from the state dir; start the
command in its own session; poll the monitors on their deadlines while waiting
on the command and on signals; on the first of (command exit, monitor verdict,
stop signal) stop the whole tree; :func:`~devops.skypilot.common.termination.decide`
the reason and exit code; record it; tell the observers; exit with the code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from devops.skypilot.common.console import say
from devops.skypilot.common.credentials import without_credentials
from devops.skypilot.common.forensics import Forensics, in_detail
from devops.skypilot.common.lifecycle import JobContext, RunObserver, announcer
from devops.skypilot.common.termination import (
    Outcome,
    RetryPolicy,
    Termination,
    TerminationReason,
    Verdict,
    decide,
    signal_name,
)
from devops.skypilot.common.values import ConfigError
from devops.skypilot.node.config import RunConfig
from devops.skypilot.node.ending import ChildEnd, deciding_signal, tell_hurried
from devops.skypilot.node.forensics import after_stop, attempt_dir, before_stop
from devops.skypilot.node.leftovers import TOKEN_VAR, new_token, stop_abandoned
from devops.skypilot.node.liveness import ProcessStamp
from devops.skypilot.node.monitors import build_monitors
from devops.skypilot.node.monitors.base import Monitor
from devops.skypilot.node.monitors.setup import MonitorSetup
from devops.skypilot.node.output import LineSink
from devops.skypilot.node.process import SupervisedProcess, become_subreaper
from devops.skypilot.node.signals import SignalWaker
from devops.skypilot.node.state import RunningAttempt, StateDir, abandoned_termination
from devops.skypilot.node.state_checks import prepare_state_dir, warn_if_local_state
from devops.skypilot.node.watchdog import Watchdog

logger = logging.getLogger(__name__)

#: How often the running attempt's runtime is checkpointed to the state dir, so a
#: SIGKILLed runner (preemption without grace) still spends its runtime budget.
CHECKPOINT_INTERVAL = 30.0


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


#: The preflight, given ``stop()`` (true once a stop signal came; it must then give up)
#: and variables for its processes' environment (the attempt's token: see leftovers.py).
Preflight = Callable[[Callable[[], bool], Mapping[str, str]], Verdict | None]


@dataclass
class RunnerExtensions:
    """What other parts of skyguard plug into a run (built by the CLI)."""

    observers: Sequence[RunObserver] = ()
    monitors: Sequence[Monitor] = ()
    #: Variables for the command's environment, unless the user already set them.
    env_defaults: Mapping[str, str] = field(default_factory=dict)
    #: A check run before the command on every attempt (the NCCL preflight); a
    #: verdict ends the attempt before the command starts.
    preflight: Preflight | None = None
    #: Ends recorded as the jobs controller's to announce (``lifecycle.left_to_controller``).
    left_to_controller: frozenset[TerminationReason] = frozenset()


class Runner:
    def __init__(
        self,
        config: RunConfig,
        extensions: RunnerExtensions | None = None,
        waker: SignalWaker | None = None,
    ) -> None:
        self.config = config
        self.extensions = extensions or RunnerExtensions()
        self.state = StateDir(config.state_dir)
        #: Handlers already installed by ``skyguard run``'s main; else installed by run().
        self.waker = waker
        #: Where a hung attempt's processes were; set before its tree is stopped.
        self.forensics: Forensics | None = None
        #: In the environment of every process of the attempt (``node/leftovers.py``).
        self.token = new_token()
        self._watchdog: Watchdog | None = None

    def run(self) -> Termination:
        """Run one attempt and return its record. Raises ConfigError before starting."""
        if self.waker is not None:
            return self._run(self.waker)
        with SignalWaker() as waker:
            return self._run(waker)

    def _run(self, waker: SignalWaker) -> Termination:
        config = self.config
        prepare_state_dir(config)
        warn_if_local_state(config)
        history = self.state.load_history()
        abandoned = self.state.take_abandoned()
        if abandoned is not None and abandoned.runner_alive():
            raise ConfigError(
                f"state dir {config.state_dir} is in use by another runner "
                f"(pid {abandoned.pid}): give each node and each run its own"
            )
        if abandoned is not None:
            logger.warning("skyguard: attempt %d left no record; counting it", abandoned.attempt)
            stop_abandoned(abandoned, config.grace)  # before a second copy starts beside it
            history.append(abandoned_termination(abandoned, config.node_rank, config.task_id))
        history = self.state.with_lost_attempts(history, config.node_rank, config.task_id)
        runtime_used = sum(item.duration for item in history)
        setup = MonitorSetup(config, runtime_used, self._base_env())
        monitors = [*build_monitors(setup), *self.extensions.monitors]
        ctx = JobContext(
            job_name=config.job_name,
            task_id=config.task_id,
            attempt=max((item.attempt for item in history), default=0) + 1,
            node_rank=config.node_rank,
            num_nodes=config.num_nodes,
            state_dir=config.state_dir,
            started_at=utc_now(),
        )
        with contextlib.suppress(FileNotFoundError):
            config.heartbeat_file.unlink()
        # Wall clock, for the mtimes of dumps written during this attempt (2 s: coarse mtimes).
        since = time.time() - 2.0
        watchdog = self._watchdog = Watchdog.start(self.token, config.grace)  # never our child
        watchdog.join_cgroup(self.token)  # where one can be made: all we start is born inside
        become_subreaper()
        try:
            outcome, child = self._attempt(ctx, monitors, waker, runtime_used)
        except BaseException as error:
            if isinstance(error, ConfigError):  # nothing ran: no attempt to count
                self.state.drop_checkpoint()
            self._tell("close")
            watchdog.close()
            raise
        watchdog.release()  # the tree is stopped
        self.forensics = after_stop(
            self.forensics,
            self._base_env(),
            since,
            attempt_dir(config.state_dir, ctx.attempt),
            config.forensics_timeout,
        )
        decision = decide(
            outcome,
            [item.summary() for item in history],
            RetryPolicy(config.max_retries, config.crash_loop_count, config.crash_loop_window),
        )
        termination = Termination(
            reason=decision.reason,
            exit_code=decision.exit_code,
            child_exit_code=child.child_exit_code,
            signal=child.signal,
            detail=child.detail(_with_stacks(decision.detail, self.forensics, config)),
            monitor=decision.monitor,
            attempt=ctx.attempt,
            started_at=ctx.started_at,
            ended_at=utc_now(),
            duration=round(outcome.duration, 3),
            node_rank=config.node_rank,
            task_id=config.task_id,
            forensics=self.forensics,
            announced_by=announcer(
                decision.reason, outcome.verdict, self.extensions.left_to_controller
            ),
        )
        try:
            self.state.record(termination, history)
        except OSError as error:
            # The decision stands: SkyPilot still needs the right exit code.
            logger.error("skyguard: could not write %s: %s", self.state.termination_file, error)
        # A closed stderr (``| head -1``) loses the line, never the code or the observers.
        say(f"skyguard: termination {json.dumps(termination.to_json())}")

        def tell_end() -> None:
            self._tell("on_end", ctx, termination)
            self._tell("close")

        tell_hurried(waker, tell_end, termination.exit_code)
        watchdog.close()  # released long ago: gone by now in practice
        return termination

    def _attempt(
        self,
        ctx: JobContext,
        monitors: list[Monitor],
        waker: SignalWaker,
        runtime_used: float,
    ) -> tuple[Outcome, ChildEnd]:
        config = self.config
        started = time.monotonic()
        # Before anything runs (observers, the preflight): a runner SIGKILLed from here
        # on leaves a checkpoint, and the next start counts the attempt as abandoned.
        self._checkpoint(ctx, 0.0, None)
        not_started = self._before_start(ctx, waker, runtime_used, started)
        if not_started is not None:
            return not_started, ChildEnd(None, None)
        process = SupervisedProcess(waker)
        verdict: Verdict | None = None
        try:
            for monitor in monitors:
                monitor.start(started)
            for signum in waker.take_forwarded():  # the command could not have a handler yet
                logger.warning("skyguard: %s before the command started", signal_name(signum))
            try:
                process.start(
                    config.command,
                    self._child_env(ctx),
                    self.state.log_file(ctx.attempt),
                    _output_sink(monitors),
                )
            except OSError as error:
                raise ConfigError(f"cannot run {config.command[0]}: {error.strerror}") from None
            if self._watchdog is not None and process.stamp is not None:
                self._watchdog.name_command(process.stamp.pid, process.stamp.start_ticks)
            logger.info(
                "skyguard: attempt %d started %s (pid %d)",
                ctx.attempt,
                config.command[0],
                process.pid,
            )
            verdict = self._watch(process, monitors, waker, ctx, started)
            # The first end wins: a signal only counts if it came before the end was seen.
            ended_by = None if verdict is not None else waker.stop_signal()
            seen = len(waker.received)
            # Before SIGTERM, while the hung processes are still where they hung.
            self.forensics = before_stop(
                verdict,
                process.descendants(),
                attempt_dir(config.state_dir, ctx.attempt),
                config.forensics_timeout,
            )
        finally:
            process.stop(config.grace)
            process.close()
            for monitor in monitors:
                _safely(monitor, "stop")
        duration = time.monotonic() - started
        ended_by = deciding_signal(ended_by, verdict, process.returncode, waker.received[seen:])
        explanation = None
        if verdict is None and ended_by is None and process.returncode:
            explanation = next(filter(None, (_explain(m) for m in monitors)), None)
        outcome = Outcome(
            child_returncode=process.returncode,
            verdict=verdict,
            runner_signal=ended_by,
            explanation=explanation,
            duration=duration,
        )
        return outcome, ChildEnd.of(process)

    def _before_start(
        self, ctx: JobContext, waker: SignalWaker, runtime_used: float, started: float
    ) -> Outcome | None:
        """Why the command must not start: a signal, a spent budget, a failed preflight."""
        config = self.config
        if waker.stop_signal() is not None:  # signalled during start-up
            return Outcome(None, runner_signal=waker.stop_signal())
        if config.max_runtime and runtime_used >= config.max_runtime:
            spent = Verdict(
                TerminationReason.MAX_RUNTIME_REACHED,
                f"max runtime {config.max_runtime:g}s already spent by earlier attempts "
                f"({runtime_used:.0f}s); not starting",
            )
            return Outcome(child_returncode=None, verdict=spent)
        self._tell("on_start", ctx)
        if waker.stop_signal() is not None:  # cancelled while observers were told
            return Outcome(None, runner_signal=waker.stop_signal())
        if self.extensions.preflight is not None:
            checkpoint_due = [started + CHECKPOINT_INTERVAL]

            def stop() -> bool:
                # Polled all along the preflight: its runtime is checkpointed too.
                if (now := time.monotonic()) >= checkpoint_due[0]:
                    self._checkpoint(ctx, now - started, None)
                    checkpoint_due[0] = now + CHECKPOINT_INTERVAL
                return waker.stop_signal() is not None

            failed = _safely(self.extensions, "preflight", stop, {TOKEN_VAR: self.token})
            duration = time.monotonic() - started
            if waker.stop_signal() is not None:  # signalled during the preflight: start nothing
                return Outcome(None, runner_signal=waker.stop_signal(), duration=duration)
            if isinstance(failed, Verdict):
                logger.warning("skyguard: preflight failed: %s", failed.detail)
                failed = replace(failed, monitor=failed.monitor or "Preflight")
                return Outcome(None, verdict=failed, duration=duration)
        return None

    def _watch(
        self,
        process: SupervisedProcess,
        monitors: list[Monitor],
        waker: SignalWaker,
        ctx: JobContext,
        started: float,
    ) -> Verdict | None:
        """The event loop: a verdict, or None once the command exited or we were signalled."""
        due = {id(monitor): monitor.next_check(started) for monitor in monitors}
        checkpoint_due = started
        while True:
            for signum in waker.take_forwarded():
                process.forward(signum)
            if process.reap() is not None or waker.stop_signal() is not None:
                return None
            now = time.monotonic()
            for monitor in list(monitors):
                if now < due[id(monitor)]:
                    continue
                try:
                    verdict = monitor.check(now)
                    due[id(monitor)] = monitor.next_check(now)
                except Exception:  # a broken monitor must not kill a healthy job
                    logger.exception("skyguard: monitor %s raised; disabling it", monitor.name)
                    monitors.remove(monitor)
                    continue
                if verdict is not None:
                    logger.warning(
                        "skyguard: %s: %s: %s", monitor.name, verdict.reason.value, verdict.detail
                    )
                    return replace(verdict, monitor=monitor.name)
            if now >= checkpoint_due:
                self._checkpoint(ctx, now - started, process.stamp)
                checkpoint_due = now + CHECKPOINT_INTERVAL
            wake = min([checkpoint_due, *(due[id(monitor)] for monitor in monitors)])
            waker.wait(wake - time.monotonic())

    def _checkpoint(self, ctx: JobContext, elapsed: float, command: ProcessStamp | None) -> None:
        cgroup = self._watchdog.cgroup_path if self._watchdog is not None else ""
        try:
            self.state.checkpoint(
                RunningAttempt.by_this_runner(
                    ctx.attempt, ctx.started_at, elapsed, utc_now(), command, self.token, cgroup
                )
            )
        except OSError as error:
            # A flaky bucket mount must not stop training; the final record retries.
            logger.warning("skyguard: could not checkpoint the attempt: %s", error)

    def _base_env(self) -> dict[str, str]:
        """The command's environment before skyguard's own variables: skyguard's
        credentials are removed, so an ``env`` dump in the training log leaks none."""
        return without_credentials({**self.extensions.env_defaults, **os.environ})

    def _child_env(self, ctx: JobContext) -> dict[str, str]:
        env = self._base_env()
        env.update(
            SKYGUARD_HEARTBEAT_FILE=str(self.config.heartbeat_file),
            # The client paces its beats by it (a tenth of the timeout, at most 1 s).
            SKYGUARD_HEARTBEAT_TIMEOUT=str(self.config.heartbeat_timeout),
            SKYGUARD_STATE_DIR=str(self.config.state_dir),
            SKYGUARD_ATTEMPT=str(ctx.attempt),
            SKYGUARD_TASK_ID=self.config.task_id,
            **{TOKEN_VAR: self.token},
            # The heartbeat client registers a stack dump there (no-ptrace forensics).
            SKYGUARD_FORENSICS_DIR=str(attempt_dir(self.config.state_dir, ctx.attempt)),
        )
        return env

    def _tell(self, hook: str, *args: object) -> None:
        for observer in self.extensions.observers:
            _safely(observer, hook, *args)


def _with_stacks(detail: str, forensics: Forensics | None, config: RunConfig) -> str:
    """The summary rides in the detail too: every channel and `skyguard status` show
    the detail, each within its own limits. A capture that found no Python stack (a
    shell script) stays in the record only. Multi-node, the stacks say whose they
    are: a node ending as ``peer_failed`` carries the deciding node's stacks in its
    detail before its own."""
    if forensics is not None and forensics.captured:
        node = config.node_rank if config.num_nodes > 1 else None
        detail = f"{detail}; {in_detail(forensics.summary, node)}"
    if forensics is not None and forensics.flight_recorder:
        detail = f"{detail}; {forensics.flight_recorder}"
    return detail


def _output_sink(monitors: Sequence[Monitor]) -> LineSink | None:
    """What the command's lines are fed to; None when no monitor reads them (then
    they are not even split). The list is read live: a disabled monitor drops out."""
    if not any(monitor.reads_output for monitor in monitors):
        return None
    return lambda data, start, end: _feed(monitors, data, start, end)


def _feed(monitors: Sequence[Monitor], data: bytes, start: int, end: int) -> None:
    for monitor in monitors:
        if monitor.reads_output:
            _safely(monitor, "observe_span", data, start, end)


def _explain(monitor: Monitor) -> Verdict | None:
    verdict = _safely(monitor, "explain")
    if isinstance(verdict, Verdict):
        return replace(verdict, monitor=monitor.name)
    return None


def _safely(target: object, method: str, *args: object) -> object:
    """Call an extension's hook; its failure is logged, never raised into the runner."""
    try:
        return getattr(target, method)(*args)
    except Exception:  # extensions are not allowed to break the runner
        logger.exception("skyguard: %s.%s failed", type(target).__name__, method)
        return None

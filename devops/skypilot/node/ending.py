"""How an attempt's end is settled: the first end wins, and the ending stays bounded.

An attempt ends at the first of (the command's exit, a monitor's verdict, a stop
signal to the runner). Whatever comes later, while the tree is being stopped or
while the observers are told (a cancel that arrives a second after the command
exited 0, Ctrl-C pressed twice), is logged and changes neither the reason nor
the exit code. A signal during the ending only makes the runner wait less for
its observers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from devops.skypilot.common.termination import Verdict, shell_exit_code, signal_name
from devops.skypilot.node.process import SupervisedProcess
from devops.skypilot.node.signals import CANCEL_SIGNALS, SignalWaker

logger = logging.getLogger(__name__)

#: After a signal during the ending, the observers (notifications, the coordination
#: linger) get at most this much longer: the record is written, the code decided.
ENDING_HURRY = 2.0


def deciding_signal(
    ended_by: int | None, verdict: Verdict | None, returncode: int | None, late: Sequence[int]
) -> int | None:
    """The runner's signal that decides the attempt, if any.

    ``ended_by`` came before the end was seen; ``late`` ones came while the tree
    was being stopped. A late one decides only when the command itself died of
    SIGTERM, SIGINT or SIGHUP on its own: that is how one signal to the whole tree
    (a cancel, a preemption) looks when the command's death is seen a moment
    before the runner's own copy arrives, and both are the same end. The others
    are logged.
    """
    deciding = ended_by
    killed_by_cancel = returncode is not None and -returncode in CANCEL_SIGNALS
    if deciding is None and late and verdict is None and killed_by_cancel:
        deciding, late = late[0], late[1:]
    for signum in late:
        logger.warning(
            "skyguard: %s came after the attempt had ended; the first end stands",
            signal_name(signum),
        )
    return deciding


@dataclass(frozen=True)
class ChildEnd:
    """How the command itself ended, as the record shows it."""

    child_exit_code: int | None
    signal: str | None
    #: Why ``logs/attempt-N.log`` misses some of its output (a full disk); None if complete.
    log_problem: str | None = None

    @classmethod
    def of(cls, process: SupervisedProcess) -> ChildEnd:
        code = process.returncode
        log = process.log_problem
        if code is None:
            return cls(None, None, log)
        return cls(shell_exit_code(code), signal_name(-code) if code < 0 else None, log)

    def detail(self, decided: str) -> str:
        """The record's detail: the decision's, and the log's state when it is incomplete."""
        return decided if self.log_problem is None else f"{decided}; {self.log_problem}"


def tell_hurried(waker: SignalWaker, tell: Callable[[], None], exit_code: int) -> None:
    """Run ``tell`` (the observers' ``on_end`` and ``close``) within :data:`ENDING_HURRY`
    of any signal that comes meanwhile; log such signals: ``exit_code`` stands."""
    decided = len(waker.received)
    if not waker.run_hurried(tell, ENDING_HURRY):
        logger.warning("skyguard: signalled while telling observers; not waiting for them longer")
    for signum in waker.received[decided:]:
        logger.warning(
            "skyguard: %s during the ending; exit code %d stands", signal_name(signum), exit_code
        )

"""The runtime budget of a task, summed over all of its attempts."""

from __future__ import annotations

from devops.skypilot.common.termination import TerminationReason, Verdict
from devops.skypilot.node.monitors.base import Monitor
from devops.skypilot.node.monitors.setup import MonitorSetup


class MaxRuntimeMonitor(Monitor):
    """Stops the job once earlier attempts plus this one have run ``max_runtime``.

    SkyPilot has no max runtime, and a recovery starts the clock again; the
    runner keeps what earlier attempts used in the state dir and passes it in.
    """

    def __init__(self, max_runtime: float, used_before: float) -> None:
        self.max_runtime = max_runtime
        self.used_before = used_before
        self._started = 0.0

    @classmethod
    def create(cls, setup: MonitorSetup) -> MaxRuntimeMonitor | None:
        if setup.config.max_runtime <= 0:
            return None
        return cls(setup.config.max_runtime, setup.runtime_used)

    def start(self, now: float) -> None:
        self._started = now

    def next_check(self, now: float) -> float:
        return self._started + max(0.0, self.max_runtime - self.used_before)

    def check(self, now: float) -> Verdict | None:
        if now < self.next_check(now):
            return None
        this_attempt = now - self._started
        return Verdict(
            TerminationReason.MAX_RUNTIME_REACHED,
            f"max runtime {self.max_runtime:g}s reached: {self.used_before:.0f}s in earlier "
            f"attempts + {this_attempt:.0f}s in this one",
        )

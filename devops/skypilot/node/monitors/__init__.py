"""Monitors the runner polls. Registering a new one is one class plus one line below."""

from __future__ import annotations

from collections.abc import Callable

from devops.skypilot.node.monitors.base import Monitor
from devops.skypilot.node.monitors.gpu import GpuMonitor
from devops.skypilot.node.monitors.heartbeat import HeartbeatMonitor
from devops.skypilot.node.monitors.log_patterns import LogPatternMonitor
from devops.skypilot.node.monitors.runtime import MaxRuntimeMonitor
from devops.skypilot.node.monitors.setup import MonitorSetup

MonitorFactory = Callable[[MonitorSetup], "Monitor | None"]

#: Each factory returns its monitor, or None when its settings turn it off.
MONITOR_FACTORIES: tuple[MonitorFactory, ...] = (
    HeartbeatMonitor.create,
    MaxRuntimeMonitor.create,
    LogPatternMonitor.create,
    GpuMonitor.from_setup,
)


def build_monitors(setup: MonitorSetup) -> list[Monitor]:
    """The monitors the configuration turns on (factories may raise ConfigError)."""
    return [monitor for factory in MONITOR_FACTORIES if (monitor := factory(setup)) is not None]


__all__ = ["MONITOR_FACTORIES", "Monitor", "MonitorSetup", "build_monitors"]

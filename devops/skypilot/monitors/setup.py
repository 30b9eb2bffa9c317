"""What a monitor factory is given to decide whether and how to watch."""

from __future__ import annotations

from dataclasses import dataclass

from devops.skypilot.config import RunConfig


@dataclass(frozen=True)
class MonitorSetup:
    config: RunConfig
    #: Seconds the task already ran in earlier attempts.
    runtime_used: float

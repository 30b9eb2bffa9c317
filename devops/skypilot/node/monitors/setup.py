"""What a monitor factory is given to decide whether and how to watch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from devops.skypilot.node.config import RunConfig


@dataclass(frozen=True)
class MonitorSetup:
    config: RunConfig
    #: Seconds the task already ran in earlier attempts.
    runtime_used: float
    #: The environment the command runs with (where it writes its dumps, say).
    child_env: Mapping[str, str] = field(default_factory=dict)

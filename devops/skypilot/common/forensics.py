"""The forensics entry of a termination record: where a hung job's processes were.

The node side (:mod:`devops.skypilot.node.forensics`) captures the stacks before the
tree is stopped; this is the part of its result that the record keeps and that
``skyguard status`` and the notifications read back. The raw stacks stay as files
in :attr:`Forensics.directory`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Forensics:
    """What the stack capture before the stop found, in one record."""

    #: One line a person reads: the odd rank(s) out and where, then the others.
    summary: str
    #: Where the raw stacks were written (``<state-dir>/forensics/attempt-N``).
    directory: str
    #: Processes of the tree looked at, and how many gave a Python stack.
    processes: int
    captured: int
    #: Milliseconds from the verdict to the end of the capture (bounded by the timeout).
    elapsed_ms: float
    #: Capture tools that gave at least one stack (``py-spy``, ``faulthandler``).
    sources: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["sources"] = list(self.sources)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Forensics:
        """Raises KeyError/TypeError/ValueError on bad data."""
        return cls(
            summary=str(data["summary"]),
            directory=str(data["directory"]),
            processes=int(data["processes"]),
            captured=int(data["captured"]),
            elapsed_ms=float(data["elapsed_ms"]),
            sources=tuple(str(item) for item in data.get("sources", ())),
        )

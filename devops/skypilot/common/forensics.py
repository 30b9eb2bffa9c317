"""The forensics entry of a termination record: where a hung job's processes were.

The node side (:mod:`devops.skypilot.node.forensics`) captures the stacks before the
tree is stopped; this is the part of its result that the record keeps and that
``skyguard status`` and the notifications read back. The raw stacks stay as files
in :attr:`Forensics.directory`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devops.skypilot.common import fields


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
    #: PyTorch's flight-recorder analysis of this attempt's dumps, in one line, if any.
    flight_recorder: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["sources"] = list(self.sources)
        if self.flight_recorder is None:
            del data["flight_recorder"]
        return data

    @classmethod
    def from_json(cls, data: Any) -> Forensics:
        """Build the entry from JSON, every field checked; ValueError names a bad one."""
        values = fields.checked(
            data, FORENSICS_FIELDS, {"sources": SOURCES, "flight_recorder": fields.TEXT}
        )
        values["elapsed_ms"] = float(values["elapsed_ms"])
        values["sources"] = tuple(values.get("sources", ()))
        return cls(**values)


#: A summary in a termination's detail (appended as ``; `` + :func:`in_detail`); its
#: first group ends at the next ``;`` (the next group) or `` [`` (the monitor a
#: forwarded end names).
_IN_DETAIL = re.compile(r"; stacks(?: on node (?P<node>\d+))?: (?P<first>.+?)(?:;| \[|$)")
_PID = re.compile(r" \(pid \d+\)")


def in_detail(summary: str, node: int | None = None) -> str:
    """How the summary rides in a termination's detail: ``stacks: ...``, or, in a
    multi-node job, ``stacks on node 1: ...`` (the head's detail carries the deciding
    node's stacks, then its own)."""
    whose = "" if node is None else f" on node {node}"
    return f"stacks{whose}: {summary}"


def culprit(detail: str) -> str:
    """The first summary's first group in ``detail``, without pids: the deciding node's
    odd rank out, for a channel with room for little else (``node 1 rank 3 in
    time.sleep at train.py:54 (_run_epoch)``). '' if the detail holds no stacks."""
    match = _IN_DETAIL.search(detail)
    if match is None:
        return ""
    node = f"node {match['node']} " if match["node"] else ""
    return node + _PID.sub("", match["first"]).strip()


SOURCES = fields.Kind(
    "a list of strings",
    lambda value: isinstance(value, list) and all(isinstance(item, str) for item in value),
)
#: What each field must be when read back from a state file of unknown origin.
FORENSICS_FIELDS: Mapping[str, fields.Kind] = {
    "summary": fields.TEXT,
    "directory": fields.TEXT,
    "processes": fields.COUNT,
    "captured": fields.COUNT,
    "elapsed_ms": fields.Kind("a finite number of milliseconds >= 0", fields.SECONDS.test),
}

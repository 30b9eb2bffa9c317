"""PEER_FAILED when another node of the job decided to stop, or the head node is gone.

The coordinator (``devops.skypilot.node.coordination``) talks to the other nodes
from its own thread and keeps what it learned; this monitor only reads that
state, so a check costs a lock and no I/O and can run every quarter second:
a peer's decision stops this node within one check interval of arriving.
"""

from __future__ import annotations

from typing import Protocol

from devops.skypilot.common.termination import Verdict
from devops.skypilot.node.monitors.base import Monitor


class PeerSource(Protocol):
    def peer_verdict(self, now: float) -> Verdict | None:
        """PEER_FAILED with the original node and reason in the detail, or None."""


class PeerMonitor(Monitor):
    """Stops this node when the job's decision was made elsewhere."""

    interval = 0.25

    def __init__(self, source: PeerSource) -> None:
        self._source = source

    def check(self, now: float) -> Verdict | None:
        return self._source.peer_verdict(now)

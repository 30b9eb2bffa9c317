"""One decision for all nodes: the head's runner keeps the board, every node follows it.

SkyPilot runs ``run:`` once per node and each runner would otherwise decide
alone: a hang seen on node 2 would leave nodes 0, 1 and 3 blocked in a
collective until their own timeouts, each reporting something different.

Protocol (HTTP/1.0 over the cluster network, JSON bodies of at most
``max_message_bytes``):

- the head (rank 0) serves ``<head ip>:<port>`` (default 29411) from one
  thread running one event loop (:mod:`~devops.skypilot.node.coordination.server`):
  a connection costs no thread, and a request must arrive whole within
  ``request_deadline`` seconds;
- a worker first joins: ``GET /v1/hello?node=N&challenge=<random>`` answers the
  head's *session*, drawn afresh each time a head starts serving (so once per
  attempt);
- every node ``POST /v1/start`` when its command starts and ``POST /v1/end``
  with its termination (reason, exit code, detail) when it ends;
- the first end that is not a success is *the decision*; later ones are kept
  for the record but change nothing;
- workers long-poll ``GET /v1/state?node=N&wait=S``: the head answers at once
  when there is a decision (or the head itself has ended), else after S
  seconds; so a decision reaches every node within milliseconds and the
  :class:`~devops.skypilot.node.monitors.peer.PeerMonitor` turns it into
  ``PEER_FAILED`` at its next check;
- a worker that cannot reach the head for ``unreachable_timeout`` seconds
  (counted from the end of ``startup_grace`` until the first contact) decides
  ``PEER_FAILED`` itself: a head killed with SIGKILL stops every node.

Security: each request carries ``X-Skyguard-Signature`` = HMAC-SHA256 over the
head's session (``X-Skyguard-Session``), the sender's rank and request number
(``X-Skyguard-Nonce: <node>.<n>``, counting up from 1), method,
path and body, keyed with the per-task token ``HMAC(secret, task id)``. The
head accepts each request number of a node once (a sliding window of 64 for
requests that overtake each other) and only in its own session: a message
recorded in one attempt and sent again, in that attempt or a later one, is
refused (409, 403) and logged. No clock takes part, so clock skew between nodes
cannot open or close that door. Each answer is signed over its request's
signature and its body, so an old answer cannot be replayed either. The token
never goes on the wire. The secret is ``SKYGUARD_COORD_SECRET`` (same on every
node; pass it as a SkyPilot secret); without it a secret is derived from the
task id, cluster name and node list, which keeps other tasks and stale runners
out but not a sender on the cluster network who can read those (a warning says
so). Unsigned, oversized or malformed messages are rejected (401/413/400),
logged, and never stop a job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from devops.skypilot.common.lifecycle import JobContext, RunObserver
from devops.skypilot.common.termination import Termination, node_exit_code
from devops.skypilot.node.coordination.head import HeadCoordinator
from devops.skypilot.node.coordination.protocol import (
    SECRET_VAR,
    CoordinationConfig,
    Coordinator,
    NodeEnd,
    coordination_secret,
    task_token,
)
from devops.skypilot.node.coordination.slurm_exit import (
    SlurmStep,
    exit_code_on_slurm,
    wait_for_workers,
)
from devops.skypilot.node.coordination.worker import WorkerCoordinator
from devops.skypilot.node.environment import SkyPilotEnv
from devops.skypilot.node.monitors.peer import PeerMonitor

logger = logging.getLogger(__name__)


class CoordinationObserver(RunObserver):
    """Starts this node's side of the protocol with the command and reports its end."""

    def __init__(self, coordinator: Coordinator, slurm: SlurmStep | None = None) -> None:
        self.coordinator = coordinator
        #: This node's Slurm task, where the order of the nodes' exits matters (see
        #: :mod:`~devops.skypilot.node.coordination.slurm_exit`); None elsewhere.
        self.slurm = slurm
        #: The job's decision as this node learned it at its end (None: none, or no head).
        self.job_decision: NodeEnd | None = None

    @property
    def is_head(self) -> bool:
        """Only the head notifies people; it sees every node's end."""
        return self.coordinator.is_head

    def on_start(self, ctx: JobContext) -> None:
        self.coordinator.start()

    def on_end(self, ctx: JobContext, termination: Termination) -> None:
        try:
            end = NodeEnd.from_termination(ctx.node_rank, termination)
            self.job_decision = self.coordinator.report_end(end)
        finally:
            # The head serves on through the other observers (its notifications) and
            # stops in close(): stopping opens the exit barrier, so no worker exits,
            # and has Slurm SIGTERM the head, while the head still notifies.
            if not self.is_head:
                self.coordinator.stop()

    def exit_code(self, own: int) -> int:
        """This node's exit code: the job's decision's, so SkyPilot reads one decision
        from every node (see :func:`~devops.skypilot.common.termination.node_exit_code`).
        On Slurm the head alone carries it, after the workers' tasks ended (blocks)."""
        decision = self.job_decision
        code = node_exit_code(own, None if decision is None else decision.exit_code)
        if code != own and decision is not None:
            logger.warning(
                "coordination: exiting %d, the job's decision (node %d: %s), not this node's %d",
                code,
                decision.node,
                decision.reason.value,
                own,
            )
        if self.slurm is None or code == 0:
            return code
        carried = exit_code_on_slurm(code, is_head=self.is_head, decided=decision is not None)
        if carried != code:
            logger.warning(
                "coordination: exiting %d on Slurm: the head exits %d for the job once this "
                "node's task has ended (srun would report a signal for a task it cancels)",
                carried,
                code,
            )
        elif self.is_head:
            logger.info(
                "coordination: waiting for the workers' Slurm tasks to end (%s), then %d",
                "their done files" if self.slurm.done_dir else "no done files: a margin",
                code,
            )
            wait_for_workers(self.slurm, self.coordinator.config.linger)
        return carried

    def close(self) -> None:
        """Leave the protocol (the head: stop serving, which opens the exit barrier)."""
        self.coordinator.stop()


def coordination_from_env(
    sky_env: SkyPilotEnv,
    state_dir: Path,
    *,
    config: CoordinationConfig | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[CoordinationObserver, PeerMonitor] | None:
    """The observer and monitor that make this node follow one decision; None on one node.

    Raises :class:`CoordinationError` on the head when the port cannot be bound.
    """
    if not sky_env.multi_node:
        return None
    config = config or CoordinationConfig()
    secret, derived = coordination_secret(os.environ if env is None else env, sky_env)
    if derived and sky_env.is_head:
        logger.warning(
            "coordination: %s is not set; the token is derived from the task id and node list, "
            "which keeps other tasks out but not a sender on the cluster network",
            SECRET_VAR,
        )
    token = task_token(secret, sky_env.task_id or "")
    coordinator: Coordinator
    if sky_env.is_head:
        coordinator = HeadCoordinator(sky_env, token, config, state_dir)
    else:
        coordinator = WorkerCoordinator(sky_env, token, config, state_dir)
    slurm = SlurmStep.from_env(
        os.environ if env is None else env, sky_env.node_rank, sky_env.num_nodes
    )
    return CoordinationObserver(coordinator, slurm), PeerMonitor(coordinator)

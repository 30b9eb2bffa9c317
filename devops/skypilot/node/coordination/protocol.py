"""The coordination protocol's shared parts: configuration, signing, messages, the node's side.

The protocol itself is described in :mod:`devops.skypilot.node.coordination`; the
head serves it (:mod:`~devops.skypilot.node.coordination.head`) and the workers
follow it (:mod:`~devops.skypilot.node.coordination.worker`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from devops.skypilot.common.credentials import COORD_SECRET_VAR
from devops.skypilot.common.termination import (
    EXIT_RETRY,
    Termination,
    TerminationReason,
    Verdict,
)
from devops.skypilot.node.environment import SkyPilotEnv
from devops.skypilot.node.state import write_json_atomic

logger = logging.getLogger(__name__)

DEFAULT_PORT = 29411
SECRET_VAR = COORD_SECRET_VAR  # one name, kept with the other credentials
SIGNATURE_HEADER = "X-Skyguard-Signature"
#: The head's session: drawn afresh each time a head starts serving (each attempt).
SESSION_HEADER = "X-Skyguard-Session"
#: ``<node>.<number>``: the sender's rank and its request number within the session.
NONCE_HEADER = "X-Skyguard-Nonce"
HELLO_PATH = "/v1/hello"
STATE_FILE = "coordination.json"
HEAD_RANK = 0
#: Longest detail carried; the sender truncates so the message stays under the limit.
_DETAIL_CHARS = 1000
_MONITOR_CHARS = 100
_WIRE_VERSION = b"skyguard-coordination-v2"


class CoordinationError(RuntimeError):
    """Coordination cannot start: the port is taken, the address is not this node's."""


@dataclass(frozen=True)
class CoordinationConfig:
    port: int = DEFAULT_PORT
    #: Address the head binds; None = this node's cluster IP from SKYPILOT_NODE_IPS.
    bind_host: str | None = None
    #: Seconds a worker tolerates not reaching the head after its start (nodes start apart).
    startup_grace: float = 60.0
    #: Seconds without contact after which a worker treats the head as failed.
    unreachable_timeout: float = 30.0
    #: Seconds a node's end report may take, retries included.
    report_timeout: float = 5.0
    #: The exit barrier: seconds a node waits after its own end for every node's end
    #: (the head keeps serving meanwhile), so no node exits while another still stops
    #: its command: on Slurm the first non-zero exit has the others SIGTERMed. It must
    #: cover the workers' stop, so the runner sets it to its grace plus a margin.
    linger: float = 5.0
    #: Seconds the head holds a long poll open; capped at a third of unreachable_timeout.
    poll_wait: float = 10.0
    max_message_bytes: int = 4096
    #: Seconds a sender has to deliver its whole request, from connecting to its last byte.
    request_deadline: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise CoordinationError(f"coordination port {self.port} is out of range")
        for name in ("startup_grace", "unreachable_timeout", "report_timeout", "linger"):
            if getattr(self, name) < 0:
                raise CoordinationError(f"coordination {name} must be >= 0")
        if self.unreachable_timeout <= 0 or self.poll_wait <= 0 or self.request_deadline <= 0:
            raise CoordinationError("coordination timeouts must be > 0")
        if self.max_message_bytes < 512:
            raise CoordinationError("coordination max_message_bytes must be >= 512")

    @property
    def long_poll(self) -> float:
        # A long poll counts as silence: it must be well inside the unreachable timeout.
        return min(self.poll_wait, self.unreachable_timeout / 3)


# --------------------------------------------------------------------------- secrets


def coordination_secret(env: Mapping[str, str], sky_env: SkyPilotEnv) -> tuple[bytes, bool]:
    """The shared secret and whether it was derived (no ``SKYGUARD_COORD_SECRET``)."""
    configured = env.get(SECRET_VAR, "")
    if configured:
        return configured.encode(), False
    material = "\0".join(
        [
            "skyguard-coordination-v1",
            sky_env.task_id or "",
            sky_env.cluster_name or "",
            *sky_env.node_ips,
        ]
    )
    return hashlib.sha256(material.encode()).digest(), True


def task_token(secret: bytes, task_id: str) -> bytes:
    """The per-task key: a token leaked from one task opens no other."""
    return hmac.new(secret, f"skyguard-task:{task_id}".encode(), hashlib.sha256).digest()


def sign(token: bytes, *parts: bytes) -> str:
    return hmac.new(token, b"\n".join(parts), hashlib.sha256).hexdigest()


def new_session() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Seal:
    """What authenticates one request: its signature binds the head's session
    (so the attempt), the sender's request number (so it is used once), method,
    path and body. No clock takes part: the nodes' clocks may disagree.
    """

    session: str
    nonce: str
    signature: str

    @classmethod
    def of(
        cls, token: bytes, session: str, nonce: str, method: str, target: str, body: bytes
    ) -> Seal:
        material = (_WIRE_VERSION, session.encode(), nonce.encode(), f"{method} {target}".encode())
        return cls(session, nonce, sign(token, *material, body))

    def headers(self) -> dict[str, str]:
        return {
            SIGNATURE_HEADER: self.signature,
            SESSION_HEADER: self.session,
            NONCE_HEADER: self.nonce,
        }

    def answer_signature(self, token: bytes, body: bytes) -> str:
        """An answer is signed over its request's signature: it answers that request only."""
        return sign(token, b"response", self.signature.encode(), body)


def hello_target(node: int) -> str:
    """The join request; its random challenge makes the (signed) answer fresh."""
    return f"{HELLO_PATH}?node={node}&challenge={secrets.token_hex(16)}"


def parse_nonce(nonce: str) -> tuple[int, int]:
    """``<node>.<number>`` -> (node, number); ValueError otherwise."""
    node, dot, number = nonce.partition(".")
    digits = all(part.isascii() and part.isdigit() for part in (node, number))
    if not (dot and digits and len(node) <= 9 and len(number) <= 18):
        raise ValueError(f"bad nonce {nonce[:40]!r}")
    return int(node), int(number)


# --------------------------------------------------------------------------- messages


def node_field(data: Mapping[str, Any], num_nodes: int) -> int:
    node = data.get("node")
    if not isinstance(node, int) or isinstance(node, bool) or not 0 <= node < num_nodes:
        raise ValueError(f"node must be an integer in [0, {num_nodes})")
    return node


@dataclass(frozen=True)
class NodeEnd:
    """How one node's attempt ended, as the nodes tell each other."""

    node: int
    reason: TerminationReason
    exit_code: int
    detail: str
    monitor: str = ""

    @property
    def is_decision(self) -> bool:
        """A success stops nobody: the other nodes may still be finishing."""
        return self.reason is not TerminationReason.COMPLETED

    @classmethod
    def from_termination(cls, node: int, termination: Termination) -> NodeEnd:
        return cls(
            node,
            termination.reason,
            termination.exit_code,
            termination.detail[:_DETAIL_CHARS],
            termination.monitor[:_MONITOR_CHARS],
        )

    def describe(self) -> str:
        monitor = f" [{self.monitor}]" if self.monitor else ""
        ended = f"{self.reason.value} (exit {self.exit_code})"
        return f"node {self.node} ended: {ended}: {self.detail}{monitor}"

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "reason": self.reason.value,
            "exit_code": self.exit_code,
            "detail": self.detail,
            "monitor": self.monitor,
        }

    @classmethod
    def from_json(cls, data: Any, num_nodes: int) -> NodeEnd:
        """Raises ValueError on anything but a well-formed end of a node of this job."""
        if not isinstance(data, dict):
            raise ValueError("an end must be a JSON object")
        node = node_field(data, num_nodes)
        try:
            reason = TerminationReason(data.get("reason"))
        except ValueError:
            raise ValueError("unknown reason") from None
        exit_code = data.get("exit_code")
        if (
            not isinstance(exit_code, int)
            or isinstance(exit_code, bool)
            or not 0 <= exit_code < 256
        ):
            raise ValueError("exit_code must be an integer in [0, 256)")
        detail, monitor = data.get("detail", ""), data.get("monitor", "")
        if not isinstance(detail, str) or not isinstance(monitor, str):
            raise ValueError("detail and monitor must be strings")
        return cls(node, reason, exit_code, detail[:_DETAIL_CHARS], monitor[:_MONITOR_CHARS])


def fit(end: NodeEnd, limit: int) -> bytes:
    """The end as a message body of at most ``limit`` bytes, its detail shortened if need be.

    JSON escapes non-ASCII text up to six bytes a character: a length in
    characters does not bound the bytes.
    """
    while True:
        body = json.dumps(end.to_json()).encode()
        if len(body) <= limit or not end.detail:
            return body
        end = replace(end, detail=end.detail[: len(end.detail) // 2])


def peer_failed_verdict(decision: NodeEnd) -> Verdict:
    """What another node's decision means here: stop, and end the way it ended.

    SkyPilot restarts the whole job when *any* node exits 75, so a peer's final
    end (its command's own crash, max runtime) imposes its exit code on every
    node; a retryable one leaves :func:`~devops.skypilot.common.termination.decide` at 75.
    """
    imposed = None if decision.exit_code == EXIT_RETRY else decision.exit_code
    return Verdict(
        TerminationReason.PEER_FAILED,
        decision.describe(),
        exit_code=imposed,
        relayed=decision.reason,
    )


# --------------------------------------------------------------------------- node side


class Coordinator(ABC):
    """This node's side of the protocol; the head and the workers differ."""

    def __init__(
        self, sky_env: SkyPilotEnv, token: bytes, config: CoordinationConfig, state_dir: Path
    ) -> None:
        self.sky_env = sky_env
        self.config = config
        self.state_dir = state_dir
        self._token = token

    @property
    def node(self) -> int:
        return self.sky_env.node_rank

    @property
    def is_head(self) -> bool:
        return self.sky_env.is_head

    @property
    @abstractmethod
    def decision(self) -> NodeEnd | None:
        """The job's decision as far as this node knows."""

    @abstractmethod
    def start(self) -> None:
        """The command starts: join the protocol (serve, or follow the head)."""

    @abstractmethod
    def peer_verdict(self, now: float) -> Verdict | None:
        """PEER_FAILED when another node decided (or the head is gone); reads state only."""

    @abstractmethod
    def report_end(self, end: NodeEnd) -> NodeEnd | None:
        """This node's command ended: report it, then wait (at most ``linger``) until
        every node has ended. Returns the job's decision, None if there is none or the
        head could not be reached. Bounded by ``report_timeout`` + ``linger``."""

    @abstractmethod
    def stop(self) -> None:
        """Leave the protocol: stop serving or following. Idempotent."""

    def _peer_failed(self) -> Verdict | None:
        decision = self.decision
        if decision is None or decision.node == self.node:
            return None
        return peer_failed_verdict(decision)

    def _write_state(self, data: Mapping[str, Any]) -> None:
        try:
            write_json_atomic(self.state_dir / STATE_FILE, {"node": self.node, **data})
        except OSError as exc:
            logger.warning("coordination: cannot write %s: %s", STATE_FILE, exc)

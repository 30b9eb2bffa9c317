"""One decision for all nodes: the head's runner keeps the board, every node follows it.

SkyPilot runs ``run:`` once per node and each runner would otherwise decide
alone: a hang seen on node 2 would leave nodes 0, 1 and 3 blocked in a
collective until their own timeouts, each reporting something different.

Protocol (HTTP/1.0 over the cluster network, JSON bodies of at most
``max_message_bytes``):

- the head (rank 0) serves ``<head ip>:<port>`` (default 29411) from a thread;
- every node ``POST /v1/start`` when its command starts and ``POST /v1/end``
  with its termination (reason, exit code, detail) when it ends;
- the first end that is not a success is *the decision*; later ones are kept
  for the record but change nothing;
- workers long-poll ``GET /v1/state?node=N&wait=S``: the head answers at once
  when there is a decision (or the head itself has ended), else after S
  seconds; so a decision reaches every node within milliseconds and the
  :class:`~devops.skypilot.monitors.peer.PeerMonitor` turns it into
  ``PEER_FAILED`` at its next check;
- a worker that cannot reach the head for ``unreachable_timeout`` seconds
  (counted from the end of ``startup_grace`` until the first contact) decides
  ``PEER_FAILED`` itself: a head killed with SIGKILL stops every node.

Security: each request carries ``X-Skyguard-Signature`` = HMAC-SHA256 over
method, path and body, keyed with the per-task token ``HMAC(secret, task id)``;
each response is signed over the request's signature and its body, so an old
answer cannot be replayed. The token never goes on the wire. The secret is
``SKYGUARD_COORD_SECRET`` (same on every node; pass it as a SkyPilot secret);
without it a secret is derived from the task id, cluster name and node list,
which keeps other tasks and stale runners out but not a sender on the cluster
network who can read those (a warning says so). Unsigned, oversized or
malformed messages are rejected (401/413/400), logged, and never stop a job.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from devops.skypilot.environment import SkyPilotEnv
from devops.skypilot.lifecycle import JobContext, RunObserver
from devops.skypilot.monitors.peer import PeerMonitor
from devops.skypilot.state import write_json_atomic
from devops.skypilot.termination import (
    EXIT_RETRY,
    Termination,
    TerminationReason,
    Verdict,
)

logger = logging.getLogger(__name__)

DEFAULT_PORT = 29411
SECRET_VAR = "SKYGUARD_COORD_SECRET"
SIGNATURE_HEADER = "X-Skyguard-Signature"
STATE_FILE = "coordination.json"
HEAD_RANK = 0
#: Longest detail carried; the sender truncates so the message stays under the limit.
_DETAIL_CHARS = 1000
_MONITOR_CHARS = 100
#: Pause between a worker's attempts to reach the head.
_RETRY_PAUSE = 0.5


class CoordinationError(RuntimeError):
    """Coordination cannot start: the port is taken, the address is not this node's."""


class _Rejected(Exception):
    """A message the head will not act on; ``status`` is the HTTP answer."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class _BadAnswer(Exception):
    """The head's answer was unsigned, oversized or not what the protocol says."""


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
    #: Seconds the head keeps serving after its own end so every worker learns it.
    linger: float = 5.0
    #: Seconds the head holds a long poll open; capped at a third of unreachable_timeout.
    poll_wait: float = 10.0
    max_message_bytes: int = 4096

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise CoordinationError(f"coordination port {self.port} is out of range")
        for name in ("startup_grace", "unreachable_timeout", "report_timeout", "linger"):
            if getattr(self, name) < 0:
                raise CoordinationError(f"coordination {name} must be >= 0")
        if self.unreachable_timeout <= 0 or self.poll_wait <= 0:
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


def _sign(token: bytes, *parts: bytes) -> str:
    return hmac.new(token, b"\n".join(parts), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- messages


def _node_field(data: Mapping[str, Any], num_nodes: int) -> int:
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
        node = _node_field(data, num_nodes)
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


def _fit(end: NodeEnd, limit: int) -> bytes:
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
    node; a retryable one leaves :func:`~devops.skypilot.termination.decide` at 75.
    """
    imposed = None if decision.exit_code == EXIT_RETRY else decision.exit_code
    return Verdict(TerminationReason.PEER_FAILED, decision.describe(), exit_code=imposed)


# --------------------------------------------------------------------------- head


class _Board:
    """What the head knows of the attempt; shared by the HTTP threads and the runner."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.started: set[int] = set()
        self.ends: dict[int, NodeEnd] = {}
        self.decision: NodeEnd | None = None
        #: Workers that were sent the decision or the head's end.
        self.informed: set[int] = set()
        self.closing = False

    def start(self, node: int) -> None:
        with self._changed:
            self.started.add(node)
            self._changed.notify_all()

    def end(self, end: NodeEnd) -> NodeEnd | None:
        """Record an end; the first that is a decision wins. Returns the decision."""
        with self._changed:
            # A node that ended had started, even if its start report lost the race.
            self.started.add(end.node)
            self.ends.setdefault(end.node, end)
            if end.is_decision and self.decision is None:
                self.decision = end
                logger.warning("coordination: decision for every node: %s", end.describe())
            self._changed.notify_all()
            return self.decision

    def _news(self) -> bool:
        return self.decision is not None or HEAD_RANK in self.ends or self.closing

    def state_for(self, node: int, wait: float) -> dict[str, Any]:
        """The decision and the head's end, waiting up to ``wait`` s for either."""
        with self._changed:
            self._changed.wait_for(self._news, timeout=wait)
            head_end = self.ends.get(HEAD_RANK)
            if self.decision is not None or head_end is not None:
                self.informed.add(node)
                self._changed.notify_all()
            return {
                "decision": None if self.decision is None else self.decision.to_json(),
                "head_end": None if head_end is None else head_end.to_json(),
            }

    def wait_workers_ended(self, num_nodes: int, timeout: float) -> bool:
        """Until every worker has reported its end; False on timeout.

        Every worker of the job, not only those that announced themselves: one
        that starts late must still find the head serving. Learning the outcome
        is not enough: a worker that learned it still reports its end, and the
        head's record should hold every node's end.
        """
        workers = set(range(num_nodes)) - {HEAD_RANK}

        def settled() -> bool:
            return not workers - self.ends.keys()

        with self._changed:
            return self._changed.wait_for(settled, timeout=timeout)

    def close(self) -> None:
        with self._changed:
            self.closing = True
            self._changed.notify_all()

    def to_json(self) -> dict[str, Any]:
        with self._changed:
            return {
                "decision": None if self.decision is None else self.decision.to_json(),
                "started": sorted(self.started),
                "ends": {str(node): end.to_json() for node, end in sorted(self.ends.items())},
            }


class _RejectionLog:
    """Logs rejections without letting a flood of them flood the log."""

    _FIRST = 20
    _EVERY = 100

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def __call__(self, client: str, status: int, why: str) -> None:
        with self._lock:
            self._count += 1
            count = self._count
        if count <= self._FIRST or count % self._EVERY == 0:
            logger.warning(
                "coordination: rejected a message from %s (%d): %s [%d rejected so far]",
                client,
                status,
                why,
                count,
            )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], head: HeadCoordinator) -> None:
        self.head = head
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished or stalled mid-request: not worth a traceback.
        logger.debug("coordination: connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    #: Seconds a sender may take to send its request: a stalled one cannot hold a thread.
    timeout = 5.0
    server_version = "skyguard-coordination"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("coordination http: " + format, *args)

    def do_GET(self) -> None:
        self._serve(b"")

    def do_POST(self) -> None:
        head = self.server.head
        length = self.headers.get("Content-Length")
        try:
            size = int(length) if length is not None else -1
        except ValueError:
            size = -1
        if size < 0:
            self._reject(411, "missing or bad Content-Length")
            return
        if size > head.config.max_message_bytes:
            self._reject(413, f"{size} bytes > {head.config.max_message_bytes}")
            return
        self._serve(self.rfile.read(size))

    def _serve(self, body: bytes) -> None:
        head = self.server.head
        signature = self.headers.get(SIGNATURE_HEADER, "")
        try:
            payload = head.handle(self.command, self.path, body, signature)
        except _Rejected as rejected:
            self._reject(rejected.status, str(rejected))
            return
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header(SIGNATURE_HEADER, head.sign_response(signature, data))
        self.end_headers()
        self.wfile.write(data)

    def _reject(self, status: int, why: str) -> None:
        self.server.head.rejections(self.client_address[0], status, why)
        data = json.dumps({"error": why}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


# --------------------------------------------------------------------------- coordinators


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
    def report_end(self, end: NodeEnd) -> None:
        """This node's command ended; bounded by ``report_timeout`` (+ ``linger`` on the head)."""

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


class HeadCoordinator(Coordinator):
    """Rank 0: keeps the board and serves it.

    Binds its port when built, so a taken port fails before the command starts.
    """

    def __init__(
        self, sky_env: SkyPilotEnv, token: bytes, config: CoordinationConfig, state_dir: Path
    ) -> None:
        super().__init__(sky_env, token, config, state_dir)
        self.board = _Board()
        self.rejections = _RejectionLog()
        host = config.bind_host or sky_env.node_ip
        try:
            self._server = _Server((host, config.port), self)
        except OSError as exc:
            raise CoordinationError(
                f"cannot serve coordination on {host}:{config.port}: {exc.strerror or exc}; "
                "another process holds the port, or the address is not this node's "
                "(choose another coordination port)"
            ) from None
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def decision(self) -> NodeEnd | None:
        return self.board.decision

    def start(self) -> None:
        if self._thread is not None or self._stopped:
            return
        self.board.start(HEAD_RANK)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="skyguard-coordination",
            daemon=True,
        )
        self._thread.start()
        logger.info(
            "coordination: serving %s:%d for %d nodes", *self.address, self.sky_env.num_nodes
        )

    def peer_verdict(self, now: float) -> Verdict | None:
        return self._peer_failed()

    def report_end(self, end: NodeEnd) -> None:
        # An attempt can end before its command starts (runtime budget already
        # spent): serve anyway, so the workers learn that decision too.
        self.start()
        self.board.end(end)
        if not self.board.wait_workers_ended(self.sky_env.num_nodes, self.config.linger):
            logger.warning(
                "coordination: not every worker reported its end within %gs; "
                "those still running stop when the head is unreachable",
                self.config.linger,
            )

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.board.close()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=2.0)
        self._server.server_close()
        self._write_state({"head": True, **self.board.to_json()})

    def sign_response(self, request_signature: str, body: bytes) -> str:
        return _sign(self._token, b"response", request_signature.encode(), body)

    def handle(self, method: str, target: str, body: bytes, signature: str) -> dict[str, Any]:
        """One authenticated request -> its answer; raises :class:`_Rejected` otherwise."""
        expected = _sign(self._token, f"{method} {target}".encode(), body)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise _Rejected(401, "missing or wrong signature")
        url = urlsplit(target)
        num_nodes = self.sky_env.num_nodes
        try:
            if method == "GET" and url.path == "/v1/state":
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                node = _node_field({"node": int(query.get("node", "-1"))}, num_nodes)
                wait = min(max(float(query.get("wait", "0")), 0.0), self.config.long_poll)
                return self.board.state_for(node, wait)
            if method == "POST" and url.path in ("/v1/start", "/v1/end"):
                data = json.loads(body)
                if url.path == "/v1/start":
                    self.board.start(_node_field(data if isinstance(data, dict) else {}, num_nodes))
                    return {"ok": True}
                decision = self.board.end(NodeEnd.from_json(data, num_nodes))
                return {"decision": None if decision is None else decision.to_json()}
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Rejected(400, f"malformed {url.path} message: {exc}") from None
        raise _Rejected(404, f"no such endpoint: {method} {url.path}")


class WorkerCoordinator(Coordinator):
    """Ranks > 0: report to the head and long-poll its board from a thread."""

    def __init__(
        self,
        sky_env: SkyPilotEnv,
        token: bytes,
        config: CoordinationConfig,
        state_dir: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(sky_env, token, config, state_dir)
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._decision: NodeEnd | None = None
        self._head_end: NodeEnd | None = None
        self._started_at: float | None = None
        self._last_contact: float | None = None
        self._last_error = "no answer yet"

    @property
    def head_address(self) -> tuple[str, int]:
        return self.sky_env.head_ip, self.config.port

    @property
    def decision(self) -> NodeEnd | None:
        with self._lock:
            return self._decision

    def start(self) -> None:
        if self._thread is not None:
            return
        self._started_at = self._clock()
        self._thread = threading.Thread(
            target=self._follow, name="skyguard-coordination", daemon=True
        )
        self._thread.start()

    def peer_verdict(self, now: float) -> Verdict | None:
        verdict = self._peer_failed()
        if verdict is not None or self._started_at is None:
            return verdict
        with self._lock:
            if self._head_end is not None:
                return None  # the head ended well and stopped serving: silence is expected
            reference = self._last_contact
            if reference is None:
                reference = self._started_at + self.config.startup_grace
            error = self._last_error
        silent = now - reference
        if silent <= self.config.unreachable_timeout:
            return None
        host, port = self.head_address
        return Verdict(
            TerminationReason.PEER_FAILED,
            f"head node {HEAD_RANK} ({host}:{port}) unreachable for {silent:.0f}s: {error}",
        )

    def report_end(self, end: NodeEnd) -> None:
        body = _fit(end, self.config.max_message_bytes)
        with self._lock:
            head_gone = self._head_end is not None
        # Once the head has ended it stops serving after its linger: one quick
        # try, not the whole report timeout against a closed port.
        budget = min(self.config.report_timeout, 0.5) if head_gone else self.config.report_timeout
        deadline = self._clock() + budget
        try:
            for attempt in Retrying(
                stop=stop_after_delay(budget),
                wait=wait_fixed(0.2),
                retry=retry_if_exception_type((OSError, http.client.HTTPException, _BadAnswer)),
                reraise=True,
            ):
                with attempt:
                    timeout = max(min(deadline - self._clock(), 2.0), 0.1)
                    answer = self._request("POST", "/v1/end", body, timeout)
        except (OSError, http.client.HTTPException, _BadAnswer) as exc:
            logger.warning("coordination: could not report this node's end to the head: %s", exc)
            return
        decision = answer.get("decision")
        if isinstance(decision, dict):
            logger.info("coordination: the head's decision: %s", decision)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            conn = self._conn
        if conn is not None and conn.sock is not None:
            # Unblocks a long poll in flight; close() alone would not wake the reader.
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError as exc:
                logger.debug("coordination: closing the long poll: %s", exc)
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        with self._lock:
            view = {
                "head": False,
                "decision": None if self._decision is None else self._decision.to_json(),
                "head_end": None if self._head_end is None else self._head_end.to_json(),
            }
        self._write_state(view)

    # ------------------------------------------------------------------ transport

    def _request(self, method: str, target: str, body: bytes, timeout: float) -> dict[str, Any]:
        signature = _sign(self._token, f"{method} {target}".encode(), body)
        host, port = self.head_address
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        with self._lock:
            self._conn = conn
        try:
            headers = {SIGNATURE_HEADER: signature, "Content-Type": "application/json"}
            conn.request(method, target, body=body if method == "POST" else None, headers=headers)
            response = conn.getresponse()
            data = response.read(self.config.max_message_bytes * 4 + 1)
            if len(data) > self.config.max_message_bytes * 4:
                raise _BadAnswer("the head's answer is oversized")
            if response.status != 200:
                raise _BadAnswer(f"the head answered {response.status}: {data[:200]!r}")
            expected = _sign(self._token, b"response", signature.encode(), data)
            answer_signature = response.getheader(SIGNATURE_HEADER, "")
            if not hmac.compare_digest(answer_signature.encode(), expected.encode()):
                raise _BadAnswer("the answer is not signed with this task's token")
            try:
                answer = json.loads(data)
            except ValueError:
                raise _BadAnswer("the head's answer is not JSON") from None
            if not isinstance(answer, dict):
                raise _BadAnswer("the head's answer is not a JSON object")
            return answer
        finally:
            with self._lock:
                self._conn = None
            conn.close()

    def _follow(self) -> None:
        """The thread: announce the start, then long-poll until there is news or stop."""
        announced = False
        start_body = json.dumps({"node": self.node}).encode()
        wait = self.config.long_poll
        while not self._stop.is_set():
            try:
                if not announced:
                    self._request("POST", "/v1/start", start_body, timeout=5.0)
                    announced = True
                answer = self._request(
                    "GET", f"/v1/state?node={self.node}&wait={wait:g}", b"", timeout=wait + 5.0
                )
                if self._learn(answer):
                    return
            except (OSError, http.client.HTTPException, _BadAnswer, ValueError) as exc:
                with self._lock:
                    self._last_error = str(exc) or type(exc).__name__
                logger.debug("coordination: head not reachable: %s", exc)
                self._stop.wait(_RETRY_PAUSE)

    def _learn(self, answer: Mapping[str, Any]) -> bool:
        """Take in the head's state; True when there is nothing more to wait for."""
        num_nodes = self.sky_env.num_nodes
        decision = answer.get("decision")
        head_end = answer.get("head_end")
        with self._lock:
            self._last_contact = self._clock()
            if decision is not None:
                self._decision = NodeEnd.from_json(decision, num_nodes)
            if head_end is not None:
                self._head_end = NodeEnd.from_json(head_end, num_nodes)
            done = self._decision is not None or self._head_end is not None
        if decision is not None:
            logger.warning("coordination: %s", self._decision.describe() if self._decision else "")
        return done


# --------------------------------------------------------------------------- runner wiring


class CoordinationObserver(RunObserver):
    """Starts this node's side of the protocol with the command and reports its end."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    @property
    def is_head(self) -> bool:
        """Only the head notifies people; it sees every node's end."""
        return self.coordinator.is_head

    def on_start(self, ctx: JobContext) -> None:
        self.coordinator.start()

    def on_end(self, ctx: JobContext, termination: Termination) -> None:
        try:
            self.coordinator.report_end(NodeEnd.from_termination(ctx.node_rank, termination))
        finally:
            self.coordinator.stop()

    def close(self) -> None:
        """Release the port when the command never started (``on_end`` does it otherwise)."""
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
    return CoordinationObserver(coordinator), PeerMonitor(coordinator)
